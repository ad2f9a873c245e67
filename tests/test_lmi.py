"""The extension on Lambda Managed Instances (LMI, issue 13), under the
simulator's LMI mode (tests/lambda_sim.py, managed_instances=True; the facts
are in shared/docs/managed-instances.md): SHUTDOWN-only registration, no
freezes, concurrent invocations whose events interleave, no runtimeDone, and
any exit before SHUTDOWN is Extension.Crash (the environment and every
invocation in flight end). The oracle is what the simulator emitted."""

from __future__ import annotations

import collections
import json
import socket

import pytest

from conftest import assert_clean_exit, ext_env, new_stream
from delivery import OWN_TYPES, assert_delivered_exactly_once, own_records
from lambda_sim import ExtensionInitError, LambdaSim
from stream_check import assert_exactly_once, events_of
from test_formats import _lid, emitted_traces, trace_fields


def _lmi(ext_bin, env, **kw) -> LambdaSim:
    return LambdaSim(ext_bin, env, managed_instances=True, **kw)


@pytest.mark.parametrize("told", [True, False], ids=["variable", "refused-invoke"])
def test_concurrent_invocations_all_reach_kinesis(ext_bin, kinesalite, told):
    """2,000 invocations, 8 at a time, interleaved, over about 10 s (each runs
    40 ms): every event on the stream once, no crash, exit 0 at SHUTDOWN. Without AWS_LAMBDA_INITIALIZATION_TYPE the
    extension learns it is on LMI from the 403 to its INVOKE registration,
    registers again for SHUTDOWN only and says so once."""
    name, _ = new_stream(kinesalite)
    with _lmi(ext_bin, ext_env(kinesalite, name), lmi_init_type_env=told) as sim:
        sim.start()
        sim.invoke_concurrent(2000, log_lines=10, concurrency=8, runtime_ms=40)
        res = sim.shutdown()
        assert sim.crash is None, sim.crash
        assert_clean_exit(sim, res)
        assert len(sim.function_line_ids) >= 2000 * 10
        recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=30)
        assert_delivered_exactly_once(sim, recs)
    statuses = [s for s, _ in sim.register_attempts]
    assert statuses == ([200] if told else [403, 200]), sim.register_attempts
    said = sim.stderr_text().count("running as on Lambda Managed Instances")
    assert said == (0 if told else 1), sim.stderr_text()[-2000:]
    assert "Lambda Managed Instances, schema 2025-01-29" in sim.stderr_text()


@pytest.mark.parametrize("mode", ["adaptive", "end", "periodic", "batch"])
def test_every_flush_mode_sends_while_invocations_run(ext_bin, kinesalite, mode):
    """No INVOKE, no freeze: in every mode the data reaches the stream before
    SHUTDOWN, by age (FLUSH_INTERVAL_MS; batch: BATCH_MAX_AGE_MS), and nothing
    waits for a runtimeDone that never comes."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH=mode, KINESIS_TELEMETRY_FLUSH_INTERVAL_MS="200",
                  KINESIS_TELEMETRY_BATCH_MAX_AGE_MS="200")
    with _lmi(ext_bin, env) as sim:
        sim.start()
        sim.invoke_concurrent(20, log_lines=10, concurrency=4)
        # Before SHUTDOWN: the function lines are on the stream already.
        lines = len(sim.function_line_ids)
        early = kinesalite.read_all(name, expect=lines, timeout=10)
        early_lines = [r for r in early if b'"type":"function"' in r["data"][:200]]
        assert len(early_lines) >= lines, (mode, len(early_lines), lines, sim.stderr_text()[-2000:])
        res = sim.shutdown()
        assert sim.crash is None, sim.crash
        assert_clean_exit(sim, res)
        recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=15)
        assert_delivered_exactly_once(sim, recs)


def test_each_record_names_the_request_its_event_names(ext_bin, kinesalite):
    """Concurrent invocations interleave: with the envelope and request partition
    keys, a JSON log line belongs to the request its own record names
    (requestId, or AWSRequestId), a wrapped plain line to none (the
    environment's key), a platform event to its own record's requestId; each
    carries the trace ids of the request it belongs to, as the simulator's
    platform.start for that request carried them."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_ENRICH="true", KINESIS_TELEMETRY_PARTITION_KEY="request")
    checked = collections.Counter()
    for key in ("requestId", "AWSRequestId"):
        with _lmi(ext_bin, env, lmi_request_id_key=key, seed=7) as sim:
            sim.start()
            sim.invoke_concurrent(24, log_lines=8, concurrency=6)
            res = sim.shutdown()
            assert_clean_exit(sim, res)
        recs = kinesalite.read_all(name, expect=1, timeout=15)
        traces = emitted_traces(sim)
        assert len(traces) == 24 and all(traces.values()), traces
        for r in recs:
            if OWN_TYPES in r["data"][:200]:
                continue
            v = json.loads(r["data"])
            event = v["event"]
            if event["type"] == "function":
                lid = _lid(event)
                if lid not in sim.line_origin:
                    continue  # the first run's lines
                rid, kind = sim.line_origin[lid]
                want = rid if kind == "json" else None
                assert v["requestId"] == want, (key, kind, v)
                assert trace_fields(v) == traces.get(want, {}), (key, kind, v)
                assert r["partition_key"] == (want or v["environmentId"]), (r["partition_key"], v)
                checked[kind] += 1
            elif isinstance(event.get("record"), dict) and "requestId" in event["record"]:
                if event["record"]["requestId"] not in traces:
                    continue  # the first run's
                assert v["requestId"] == event["record"]["requestId"], v
                assert trace_fields(v) == traces[v["requestId"]], v
                checked["traced"] += "traceId" in v
                assert r["partition_key"] == event["record"]["requestId"]
                checked["platform"] += 1
    assert checked["json"] >= 2 * 24 * 8 * 0.6 and checked["text"] > 0 and checked["platform"] > 0, checked
    assert checked["traced"] == checked["platform"], checked


def _taken_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


@pytest.mark.parametrize("case", ["invalid", "missing-stream", "port-taken"])
def test_bad_configuration_never_ends_the_environment(ext_bin, kinesalite, case):
    """Invalid settings, no stream, an unusable listener port: on LMI an exit is
    Extension.Crash, so the extension logs the problem (naming the variable),
    stays registered, lets every invocation run and leaves only at SHUTDOWN,
    with exit 0. (Strict mode fails the init on purpose: see below.)"""
    name, _ = new_stream(kinesalite)
    held = None
    env = ext_env(kinesalite, name)
    if case == "invalid":
        env["KINESIS_TELEMETRY_FLUSH"] = "sometimes"
        named = "KINESIS_TELEMETRY_FLUSH"
    elif case == "missing-stream":
        del env["KINESIS_TELEMETRY_STREAM"]
        named = "KINESIS_TELEMETRY_STREAM"
    elif case == "port-taken":
        held, port = _taken_port()
        env["KINESIS_TELEMETRY_LISTENER_PORT"] = str(port)
        named = "KINESIS_TELEMETRY_LISTENER_PORT"
    try:
        with _lmi(ext_bin, env) as sim:
            sim.start()
            sim.invoke_concurrent(10, log_lines=5, concurrency=4)
            res = sim.shutdown()
            assert sim.crash is None, sim.crash
            assert res.exit_code == 0 and not res.killed, (res, sim.stderr_text()[-2000:])
            assert named in sim.stderr_text(), sim.stderr_text()[-2000:]
    finally:
        if held:
            held.close()


def test_strict_mode_reports_the_init_error_and_exits(ext_bin, kinesalite):
    """Strict mode on LMI: after init/error the extension exits (the Extensions API
    asks it to). It used to keep calling event/next, refused with 403
    InvalidExtensionState every 2 s or more, holding the init until its timeout
    (130 s or more on LMI). The exit ends the init with the error reported, not
    Extension.Crash (the simulator plays AWS's emulator here: see lambda_sim)."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="sometimes", KINESIS_TELEMETRY_STRICT="true")
    with _lmi(ext_bin, env, init_timeout_ms=15000) as sim:
        with pytest.raises(ExtensionInitError):
            sim.start()
        assert [e["error_type"] for e in sim.init_errors] == ["Extension.ConfigInvalid"], sim.init_errors
        assert "KINESIS_TELEMETRY_FLUSH" in sim.init_errors[0]["json"]["errorMessage"]
        assert sim.exit_code is not None, "still running after init/error"
        assert sim._exit_time - sim.init_errors[0]["time"] < 2.0
        assert sim.init_failed == "Extension.ConfigInvalid" and sim.crash is None, (sim.init_failed, sim.crash)
        assert sim.violations == [], sim.violations


def test_a_refused_schema_version_is_tried_once_with_the_other(ext_bin, kinesalite):
    """Configured for 2022-12-13, which LMI refuses: the extension logs the
    refusal, subscribes with 2025-01-29, says which one is in use, and every
    event arrives."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_SCHEMA_VERSION="2022-12-13")
    with _lmi(ext_bin, env) as sim:
        sim.start()
        sim.invoke_concurrent(10, log_lines=5, concurrency=4)
        res = sim.shutdown()
        # The refused subscription is the one protocol error, and expected.
        refused = [v for v in sim.violations if "schemaVersion '2022-12-13'" in v]
        assert len(refused) == 1, sim.violations
        sim.violations.remove(refused[0])
        assert_clean_exit(sim, res)
        recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=15)
        assert_delivered_exactly_once(sim, recs)
    err = sim.stderr_text()
    assert "refused schema version 2022-12-13" in err and "schema 2025-01-29" in err, err[-2000:]
    assert [s for s, _ in sim.subscribe_attempts] == [400, 200], sim.subscribe_attempts


def test_metrics_records_come_periodically_and_at_shutdown(ext_bin, kinesalite):
    """There is no invoke to hang the metrics record on: it comes every
    METRICS_INTERVAL_MS while records flow, and a final one at SHUTDOWN."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_METRICS_INTERVAL_MS="300",
                  KINESIS_TELEMETRY_FLUSH_INTERVAL_MS="100")
    with _lmi(ext_bin, env) as sim:
        sim.start()
        sim.run_traffic(1000, 1.5, concurrency=4, log_lines=10)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=15)
    metrics = [m["record"] for m in own_records(recs, "metrics")]
    periodic = [m for m in metrics if not m["final"]]
    assert len(periodic) >= 2 and metrics[-1]["final"], metrics
    assert metrics[-1]["droppedShutdown"] == 0 and metrics[-1]["droppedRejected"] == 0


@pytest.mark.timing
def test_one_environment_sustains_5000_events_per_second_in_kpl(ext_bin, kinesalite):
    """One LMI environment serves far more traffic than a default sandbox: 5,000
    events/s for 3 s, 16 invocations at once, into kinesalite with the kpl format:
    every event arrives exactly once, nothing is lost at SHUTDOWN, and the peak
    RSS stays near the buffer cap."""
    name, _ = new_stream(kinesalite, shards=2)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FORMAT="kpl")
    with _lmi(ext_bin, env) as sim:
        sim.start()
        traffic = sim.run_traffic(5000, 3.0, concurrency=16, log_lines=20)
        assert traffic.rate >= 4750, traffic  # the simulator kept up
        rss_kb = sim._read_vmhwm_kb()
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=1, timeout=20)
    inner = [e.data for e in events_of(recs, "kpl")]
    assert_exactly_once(sim, inner)
    # The buffer cap at the simulator's 512 MB is 32 MiB; the extension holds
    # far less when Kinesis keeps up.
    assert rss_kb is not None and rss_kb < 40 * 1024, rss_kb
