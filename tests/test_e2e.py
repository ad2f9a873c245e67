"""End-to-end tests: the built extension binary under the Lambda simulator,
writing to real Kinesis emulators (kinesalite, kinesis-local, moto), read back
with boto3. Every event the simulator delivered to the extension must be on
the stream, byte for byte, exactly once."""

from __future__ import annotations

import collections
import http.client
import json
from urllib.parse import urlsplit

import pytest

import emulators
from conftest import assert_clean_exit, ext_env, new_stream, run_invokes
from delivery import final_metrics, OWN_TYPES, assert_delivered_exactly_once, own_records, shutdown_counters
from fault_proxy import Faults, FaultProxy
from lambda_sim import LambdaSim


def records_of(emu, stream, expect, timeout=15):
    recs = emu.read_all(stream, expect=expect, timeout=timeout)
    return recs


def function_ids_on_stream(recs) -> set[str]:
    text = b"\n".join(r["data"] for r in recs).decode("utf-8", "replace")
    return text


def test_every_event_arrives_exactly_once_over_25_frozen_invokes(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name)) as sim:
        run_invokes(sim, 25, 20, idle_ms=5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
        assert sim.freeze_count >= 25
        recs = records_of(kinesalite, name, expect=len(sim.delivered))
        assert_delivered_exactly_once(sim, recs)
        # Every function line (unique id each) and every invoke's platform events,
        # including the last report that only arrives during SHUTDOWN.
        recs = [r for r in recs if OWN_TYPES not in r["data"][:120]]
        text = function_ids_on_stream(recs)
        assert len(sim.function_line_ids) == 25 * 20 + 1  # + the init line
        assert all(i in text for i in sim.function_line_ids)
        types = collections.Counter(json.loads(r["data"])["type"] for r in recs)
        assert types["platform.start"] == 25
        assert types["platform.runtimeDone"] == 25
        assert types["platform.report"] == 25, types
        assert types["platform.initStart"] == 1
        # environment mode: one key for the whole execution environment
        assert len({r["partition_key"] for r in recs}) == 1
        # sub-second exec -> first next, far below Lambda's 10 s init budget
        assert sim.init_ms is not None and sim.init_ms < 2000


def test_json_logs_to_kinesis_local_by_stream_arn(ext_bin, kinesis_local):
    name, arn = new_stream(kinesis_local)
    with LambdaSim(ext_bin, ext_env(kinesis_local, arn), log_format="json") as sim:
        run_invokes(sim, 20, 5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
        recs = records_of(kinesis_local, name, expect=len(sim.delivered))
        assert_delivered_exactly_once(sim, recs)
        fn = [json.loads(r["data"]) for r in recs]
        fn = [e for e in fn if e["type"] == "function"]
        assert fn and all(isinstance(e["record"], dict) for e in fn)


def test_sigv4_verified_by_moto_with_assumed_role_credentials(ext_bin, moto):
    name, arn = new_stream(moto)
    key, secret, token = emulators.moto_make_credentials(moto, arn)
    emulators.moto_enable_auth(moto)
    env = ext_env(moto, name, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_SESSION_TOKEN=token)
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 20, 5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    emulators.moto_disable_auth(moto)
    recs = records_of(moto, name, expect=len(sim.delivered))
    assert_delivered_exactly_once(sim, recs)


def test_wrong_secret_is_refused_and_logged_clearly(ext_bin, moto):
    name, arn = new_stream(moto)
    key, secret, token = emulators.moto_make_credentials(moto, arn)
    emulators.moto_enable_auth(moto)
    env = ext_env(moto, name, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret + "x", AWS_SESSION_TOKEN=token)
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 3, 5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
        err = sim.stderr_text()
    emulators.moto_disable_auth(moto)
    assert "SignatureDoesNotMatch" in err, err
    assert "AWS_SECRET_ACCESS_KEY" in err  # the log says what to check
    assert err.count("ERROR PutRecords refused") == 1, err  # once, not per batch
    # Parked (a secret can be fixed by a redeploy), never accepted: every
    # record is counted under its cause at SHUTDOWN.
    counters = shutdown_counters(err)
    assert counters["droppedSignature"] == counters["eventsReceived"] + 1 > 1, counters
    assert moto.read_all(name) == []


@pytest.mark.parametrize("mode", ["202", "404"])
def test_missing_telemetry_api_keeps_the_lifecycle(ext_bin, kinesalite, mode):
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name), telemetry_mode=mode) as sim:
        run_invokes(sim, 5, 3)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
        assert max(sim.post_runtime_ms) < 500
        assert "no telemetry will arrive" in sim.stderr_text()
        assert sim.stderr_text().count("WARN") == 1


def test_invalid_config_stays_idle_and_names_the_variable(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="sometimes", KINESIS_TELEMETRY_BUFFER_MAX_ITEMS="5")
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 3, 3)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
        err = sim.stderr_text()
        assert 'KINESIS_TELEMETRY_FLUSH="sometimes"' in err and "one of adaptive, end, periodic, batch" in err
        assert 'KINESIS_TELEMETRY_BUFFER_MAX_ITEMS="5"' in err and "1000 to 10000" in err
        assert sim.subscription is None
    assert kinesalite.read_all(name) == []


def test_strict_mode_fails_init_with_config_invalid(ext_bin, kinesalite):
    env = ext_env(kinesalite, "s", KINESIS_TELEMETRY_STRICT="true", KINESIS_TELEMETRY_STREAM=None)
    sim = LambdaSim(ext_bin, env)
    with sim, pytest.raises(Exception):
        sim.start()
    assert sim.init_errors, sim.stderr_text()
    assert sim.init_errors[0]["error_type"] == "Extension.ConfigInvalid"
    assert "KINESIS_TELEMETRY_STREAM" in json.dumps(sim.init_errors[0])


def test_partial_failures_resend_only_failed_records(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint, Faults(record_fail_share=0.3)) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint)
        with LambdaSim(ext_bin, env) as sim:
            run_invokes(sim, 20, 30)
            res = sim.shutdown()
            assert_clean_exit(sim, res)
        failed = sum(p.failed_records for p in proxy.puts)
        assert failed > 50, proxy.puts
    recs = records_of(kinesalite, name, expect=len(sim.delivered))
    # Failed records never reached the emulator, so resending them makes no duplicates.
    assert_delivered_exactly_once(sim, recs)


def test_throttled_and_failing_requests_are_retried(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    errors = [(400, "ProvisionedThroughputExceededException"), (503, "ServiceUnavailable"),
              (400, "com.amazonaws.kinesis#LimitExceededException"), (500, "InternalFailure")]
    with FaultProxy(kinesalite.endpoint, Faults(request_errors=list(errors))) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint)
        with LambdaSim(ext_bin, env) as sim:
            run_invokes(sim, 5, 10)
            res = sim.shutdown()
            assert_clean_exit(sim, res)
        assert [p.status for p in proxy.puts[:4]] == [400, 503, 400, 500]
    recs = records_of(kinesalite, name, expect=len(sim.delivered))
    assert_delivered_exactly_once(sim, recs)


def test_requests_respect_record_and_byte_limits(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_MAX_BYTES_PER_REQUEST="100000")
        with LambdaSim(ext_bin, env, freeze=False) as sim:
            run_invokes(sim, 2, 1200)
            res = sim.shutdown()
            assert_clean_exit(sim, res)
        assert max(p.records for p in proxy.puts) <= 500
        assert max(p.payload_bytes for p in proxy.puts) <= 100000
        assert any(p.records == 500 or p.payload_bytes > 90000 for p in proxy.puts)
    recs = records_of(kinesalite, name, expect=len(sim.delivered))
    assert_delivered_exactly_once(sim, recs)


def test_oversized_event_is_split_into_fragments_that_rebuild_it(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    big = lambda i, lid: f"{lid} " + ("é\"\\\t" * 3000)  # noqa: E731  ~15 KB escaped
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_MAX_RECORD_BYTES="4096")
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 2, 2, line_factory=big)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=10)
    assert all(len(r["data"]) + len(r["partition_key"]) <= 4096 for r in recs)
    frags = collections.defaultdict(list)
    whole = set()
    for r in recs:
        v = json.loads(r["data"])
        if v.get("type") == "kinesis-telemetry-extension.metrics":
            continue
        if v.get("type") == "kinesis-telemetry-extension.fragment":
            frags[v["fragment"]["id"]].append(v)
        else:
            whole.add(r["data"])
    rebuilt = set()
    for parts in frags.values():
        parts.sort(key=lambda v: v["fragment"]["index"])
        assert [p["fragment"]["index"] for p in parts] == list(range(parts[0]["fragment"]["count"]))
        rebuilt.add("".join(p["data"] for p in parts).encode())
    big_events = {e for e in sim.delivered if len(e) > 4000}
    assert len(big_events) == 4
    assert big_events <= rebuilt
    assert {e for e in sim.delivered if len(e) <= 4000} - whole == set()
    # Counted for each event, logged once (each log line is itself telemetry;
    # before issue 22: one WARN line per fragmented event).
    warned = [l for l in sim.stderr_text().splitlines() if "fragment records" in l]
    assert len(warned) == 1 and "WARN" in warned[0], warned
    assert final_metrics(recs)["fragmentedEvents"] == 4


def test_unparseable_body_is_forwarded_as_a_marker(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name), freeze=False) as sim:
        sim.start()
        port = urlsplit(sim.subscription["destination"]["URI"]).port
        for body in (b'{"not":"an array"}', b"[1,", b"\xff\xfe"):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
            assert c.getresponse().status == 200  # never a 4xx: Lambda would redeliver
            c.close()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/")
        assert c.getresponse().status == 405
        c.close()
        sim.invoke(log_lines=3)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 3)
    markers = own_records(recs, "unparsed")
    assert len(markers) == 3
    assert markers[0]["record"]["body"] == '{"not":"an array"}'
    assert markers[1]["record"]["body"] == "[1,"
    assert markers[2]["record"]["bodyBase64"] == "//4="
    assert own_records(recs, "metrics")[0]["record"]["unparsedBodies"] == 3
    assert_delivered_exactly_once(sim, [r for r in recs if b"unparsed" not in r["data"][:80]])


def test_batch_mode_delivers_everything_in_fewer_requests(ext_bin, kinesalite):
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_FLUSH="batch", KINESIS_TELEMETRY_BATCH_MAX_AGE_MS="60000")
        with LambdaSim(ext_bin, env) as sim:
            run_invokes(sim, 20, 5)
            res = sim.shutdown()
            assert_clean_exit(sim, res)
        # nothing was due during the invokes: everything went at SHUTDOWN,
        # followed by the final metrics record
        assert [p.records for p in proxy.puts] == [len(sim.delivered), 1], proxy.puts
    recs = records_of(kinesalite, name, expect=len(sim.delivered))
    assert_delivered_exactly_once(sim, recs)


@pytest.mark.parametrize("mode", ["request", "random"])
def test_partition_key_modes_spread_records(ext_bin, kinesalite, mode):
    name, _ = new_stream(kinesalite, shards=4)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_PARTITION_KEY=mode)
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 8, 10)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    recs = records_of(kinesalite, name, expect=len(sim.delivered))
    assert_delivered_exactly_once(sim, recs)
    recs = [r for r in recs if OWN_TYPES not in r["data"][:120]]
    keys = {r["partition_key"] for r in recs}
    if mode == "request":
        starts = [json.loads(r["data"]) for r in recs]
        by_req = {e["record"]["requestId"]: r["partition_key"] for e, r in zip(starts, recs)
                  if e["type"] == "platform.start"}
        assert by_req and all(k == rid for rid, k in by_req.items())
    else:
        assert len(keys) > len(recs) * 0.9
    assert len({r["shard"] for r in recs}) > 1
