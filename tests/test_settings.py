"""Settings at non-default values, each checked where it shows (issue 11,
finding 8), and concurrent valid deliveries to the listener."""

from __future__ import annotations

import collections
import json
import socket
import threading

import pytest

from conftest import assert_clean_exit, ext_env, new_stream, run_invokes, run_with_faults
from delivery import READ_TIMEOUT, assert_run_ok, check_delivery, final_metrics, shutdown_counters
from fault_proxy import HANG, Faults, FaultProxy
from lambda_sim import ExtensionInitError, LambdaSim
from test_listener_hostile import listener_port, post


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_subscription_follows_the_settings(ext_bin, kinesalite):
    """LISTENER_PORT and the three BUFFER_* settings reach the subscription; TYPES
    picks what is forwarded (platform is still subscribed: it drives flushing)."""
    name, _ = new_stream(kinesalite)
    port = free_port()
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_LISTENER_PORT=str(port),
                  KINESIS_TELEMETRY_BUFFER_TIMEOUT_MS="60", KINESIS_TELEMETRY_BUFFER_MAX_ITEMS="2000",
                  KINESIS_TELEMETRY_BUFFER_MAX_BYTES="524288", KINESIS_TELEMETRY_TYPES="function")
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 4, 5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    sub = sim.subscription
    assert sub["destination"]["URI"] == f"http://sandbox.localdomain:{port}", sub
    assert sub["buffering"] == {"timeoutMs": 60, "maxItems": 2000, "maxBytes": 524288}, sub
    assert set(sub["types"]) == {"platform", "function"}, sub
    recs = kinesalite.read_all(name, expect=4 * 5 + 1 + 1, timeout=READ_TIMEOUT)
    types = {json.loads(r["data"])["type"] for r in recs}
    assert types == {"function", "kinesis-telemetry-extension.metrics"}, types
    on_stream = {r["data"] for r in recs}
    functions = [e for e in sim.delivered if b'"type":"function"' in e[:60]]
    assert functions and all(e in on_stream for e in functions)


def test_concurrent_deliveries_all_arrive(ext_bin, kinesalite):
    """Eight clients POST valid telemetry at once, 20 bodies each, while Lambda
    delivers its own: every event of every body is on the stream, once."""
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end"),
                   freeze=False) as sim:
        sim.start()
        port = listener_port(sim)
        sent, statuses = [], []
        lock = threading.Lock()

        def client(c):
            for b in range(20):
                events = [json.dumps({"time": "2026-01-01T00:00:00.000Z", "type": "function",
                                      "record": f"client {c} body {b} line {i}"}).encode() for i in range(10)]
                status = post(port, b"[" + b",".join(events) + b"]")
                with lock:
                    statuses.append(status)
                    sent.extend(events)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for _ in range(3):
            sim.invoke(log_lines=10)
        for t in threads:
            t.join(timeout=60)
        sim.invoke(log_lines=5)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    assert statuses == [200] * 160
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + len(sent) + 1, timeout=READ_TIMEOUT)
    on_stream = [r["data"] for r in recs]
    assert all(on_stream.count(e) == 1 for e in sent)
    check_delivery(sim, recs, allow_strangers=True)


# ----------------------------------------------------------------- lifecycle edges


@pytest.mark.timing
def test_a_missing_runtime_done_is_waited_for_only_as_long_as_configured(ext_bin, kinesalite):
    """`end` mode, no platform.runtimeDone at all: with RUNTIME_DONE_TIMEOUT_MS=200
    each invoke ends ~200 ms after it began (one WARN per invoke says why); with the
    default (0: until the invoke deadline) it ends ~100 ms before the deadline.
    Everything Lambda emitted arrives either way."""
    posts = {}
    for setting in ("200", None):
        name, _ = new_stream(kinesalite)
        env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end",
                      **({"KINESIS_TELEMETRY_RUNTIME_DONE_TIMEOUT_MS": setting} if setting else {}))
        with LambdaSim(ext_bin, env, timeout_ms=1000) as sim:
            sim.start()
            for _ in range(3):
                r = sim.invoke(log_lines=5, runtime_done_delay_ms=None)
                assert not r.timed_out
            res = sim.shutdown()
            assert_clean_exit(sim, res)
        posts[setting] = sim.post_runtime_ms
        assert sim.stderr_text().count("no platform.runtimeDone") == 3, sim.stderr_text()[-2000:]
        recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
        check_delivery(sim, recs)
    assert all(150 <= p <= 600 for p in posts["200"]), posts
    assert all(700 <= p <= 1000 for p in posts[None]), posts


@pytest.mark.timing
def test_a_late_runtime_done_is_waited_for(ext_bin, kinesalite):
    """`end` mode, runtimeDone 150 ms after the function ended: the extension waits
    for it, sends the invoke's data, and only then calls event/next."""
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end")) as sim:
        sim.start()
        for _ in range(3):
            assert not sim.invoke(log_lines=5, runtime_done_delay_ms=150).timed_out
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    assert all(150 <= p <= 1000 for p in sim.post_runtime_ms), sim.post_runtime_ms
    assert "no platform.runtimeDone" not in sim.stderr_text()
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
    check_delivery(sim, recs)


def test_shutdown_after_a_function_timeout(ext_bin, kinesalite):
    """The function runs past its timeout (its runtimeDone comes after the deadline),
    then Lambda shuts the environment down with reason "timeout": the extension
    called event/next in time, exits 0, and delivers everything."""
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end"), timeout_ms=500) as sim:
        sim.start()
        assert not sim.invoke(log_lines=5).timed_out
        r = sim.invoke(log_lines=5, runtime_ms=700)
        assert not r.timed_out
        res = sim.shutdown(reason="timeout")
        assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
    check_delivery(sim, recs)


def test_no_wait_for_the_last_report_with_shutdown_wait_0(ext_bin, kinesalite):
    """SHUTDOWN_WAIT_MS=0: the final flush starts at once (short shutdown); the last
    invoke's platform.report, which Lambda delivers after SHUTDOWN, may miss it."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end", KINESIS_TELEMETRY_SHUTDOWN_WAIT_MS="0")
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 3, 5)
        res = sim.shutdown()
        # what may be lost is exactly the last report, which it did not wait for
        assert_clean_exit(sim, res, pushback=True)
    assert all(b'"platform.report"' in e[:80] and sim.request_ids[-1].encode() in e
               for e in sim.lost_before_shutdown), sim.lost_before_shutdown
    assert res.shutdown_ms < 300, res
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=READ_TIMEOUT)
    late = [e for e in sim.delivered if b'"platform.report"' in e[:80]][-1:]
    check_delivery(sim, recs, lost=collections.Counter(late))


# ------------------------------------------------------------------ retry settings


def test_max_attempts_1_gives_up_for_now_and_keeps_the_records(ext_bin, kinesalite):
    """MAX_ATTEMPTS=1 with 503s in pairs: a flush gives up after one failed round
    (logged), keeps the records, and the next flush delivers them."""
    rule = lambda i, headers: (503, "ServiceUnavailable") if i % 3 < 2 else None  # noqa: E731
    sim, proxy, name = run_with_faults(ext_bin, kinesalite, rule, 6, 5, KINESIS_TELEMETRY_FLUSH="end",
                                       KINESIS_TELEMETRY_MAX_ATTEMPTS="1")
    assert "still unsent after 1 attempts" in sim.stderr_text()
    # one request per flush while failing: never two failures in a row within an invoke
    nexts = sim.next_call_times
    for a, b in zip(nexts, nexts[1:]):
        failed = [p for p in proxy.puts if a < p.t_start < b and p.status == 503]
        assert len(failed) <= 1, [(p.t_start, p.status) for p in proxy.puts]
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
    check_delivery(sim, recs, proxy)


def test_retry_budget_0_denies_retries_and_loses_nothing(ext_bin, kinesalite):
    """RETRY_BUDGET=0: every retry inside a flush is denied (counted as
    retriesDenied); the records wait for the next flush and all arrive."""
    rule = lambda i, headers: (500, "InternalFailure") if i % 2 == 0 else None  # noqa: E731
    sim, proxy, name = run_with_faults(ext_bin, kinesalite, rule, 6, 5, KINESIS_TELEMETRY_FLUSH="end",
                                       KINESIS_TELEMETRY_RETRY_BUDGET="0")
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
    check_delivery(sim, recs, proxy)
    m = final_metrics(recs)
    assert m["retriesDenied"] >= 3 and m["droppedShutdown"] == 0, m


def test_a_sink_that_hangs_during_the_final_flush(ext_bin, kinesalite):
    """Every request after SHUTDOWN hangs: the extension still exits 0 before the
    deadline, and exactly what is not on the stream is counted as droppedShutdown."""
    name, _ = new_stream(kinesalite)
    state = {"shutdown": False}
    rule = lambda i, headers: HANG if state["shutdown"] else None  # noqa: E731
    with FaultProxy(kinesalite.endpoint, Faults(rule=rule)) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_FLUSH="batch", KINESIS_TELEMETRY_BATCH_MAX_AGE_MS="600000",
                      KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS="400")
        with LambdaSim(ext_bin, env) as sim:
            run_invokes(sim, 4, 10)
            state["shutdown"] = True
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
        assert any(p.outcome == HANG for p in proxy.puts)
    recs = kinesalite.read_all(name, timeout=1)
    counters = shutdown_counters(sim.stderr_text())
    missing = collections.Counter(sim.delivered) - collections.Counter(r["data"] for r in recs)
    # everything it received, and its metrics record, is lost and counted
    assert sum(missing.values()) == len(sim.delivered)
    assert counters["droppedShutdown"] == len(sim.delivered) + 1, (counters, len(sim.delivered))


@pytest.mark.timing
def test_backoff_settings_shape_the_waits_between_retries(ext_bin, kinesalite):
    """503 for the first six requests of each run, `end` mode: with
    BACKOFF_CAP_MS=30 no wait between a failure and its retry passes the cap (plus
    a request's own time); with BACKOFF_BASE_MS=BACKOFF_CAP_MS=400 (full jitter in
    [0, 400]) some wait is clearly longer than that."""
    gaps = {}
    for label, base, cap in (("short", "5", "30"), ("long", "400", "400")):
        name, _ = new_stream(kinesalite)
        rule = lambda i, headers: (503, "ServiceUnavailable") if i < 6 else None  # noqa: E731
        with FaultProxy(kinesalite.endpoint, Faults(rule=rule)) as proxy:
            env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                          KINESIS_TELEMETRY_FLUSH="end", KINESIS_TELEMETRY_MAX_ATTEMPTS="10",
                          KINESIS_TELEMETRY_BACKOFF_BASE_MS=base, KINESIS_TELEMETRY_BACKOFF_CAP_MS=cap)
            with LambdaSim(ext_bin, env, timeout_ms=6000) as sim:
                run_invokes(sim, 2, 5)
                res = sim.shutdown()
            assert_run_ok(sim, res, proxy)
            puts = sorted(proxy.puts, key=lambda p: p.t_start)
            gaps[label] = [(b.t_start - a.t_end) * 1000 for a, b in zip(puts, puts[1:]) if a.status == 503]
        recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
        check_delivery(sim, recs, proxy)
    assert len(gaps["short"]) >= 5 and max(gaps["short"]) < 30 + 60, gaps
    assert max(gaps["long"]) > 100 and max(gaps["long"]) < 400 + 150, gaps


@pytest.mark.timing
def test_connect_timeout_bounds_a_blackholed_endpoint(ext_bin, kinesalite):
    """An endpoint whose SYNs are dropped (a listener with a full backlog):
    CONNECT_TIMEOUT_MS=200 and MAX_ATTEMPTS=1 make each end-of-invoke flush give up
    after about 200 ms, not the request timeout; at SHUTDOWN everything is counted
    lost, and the process exits in time."""
    black = socket.socket()
    black.bind(("127.0.0.1", 0))
    black.listen(0)
    filler = socket.create_connection(black.getsockname(), timeout=2)  # fills the backlog
    try:
        host, port = black.getsockname()
        name, _ = new_stream(kinesalite)
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=f"http://{host}:{port}",
                      KINESIS_TELEMETRY_FLUSH="end", KINESIS_TELEMETRY_CONNECT_TIMEOUT_MS="200",
                      KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS="5000", KINESIS_TELEMETRY_MAX_ATTEMPTS="1")
        with LambdaSim(ext_bin, env, timeout_ms=3000) as sim:
            run_invokes(sim, 3, 5)
            res = sim.shutdown()
            assert_clean_exit(sim, res)
    finally:
        filler.close()
        black.close()
    post = sim.post_runtime_ms
    assert all(150 <= p <= 1000 for p in post[1:]), post
    counters = shutdown_counters(sim.stderr_text())
    assert counters["droppedShutdown"] == len(sim.delivered) + 1, (counters, len(sim.delivered))


# ------------------------------------------------- the body limit and Lambda's batches (issue 22, item 4)

ONE_MIB = 1048576
# Lambda's largest buffering: 1 MiB and 10,000 events a batch.
BIG_BUFFERS = {"KINESIS_TELEMETRY_BUFFER_MAX_BYTES": str(ONE_MIB),
               "KINESIS_TELEMETRY_BUFFER_MAX_ITEMS": "10000",
               "KINESIS_TELEMETRY_BUFFER_TIMEOUT_MS": "1000"}
# 2 x BUFFER_MAX_BYTES + 128 bytes per event x BUFFER_MAX_ITEMS: config::largest_batch.
SMALLEST_SAFE_BODY = 2 * ONE_MIB + 128 * 10000


def _line(i: int, lid: str) -> str:
    """~190-byte events: 1 MiB of them and the commas between them make a body over
    1 MiB (the simulator batches as Lambda does, up to maxBytes of events)."""
    return f"line {lid} #{i} " + "x" * 60


@pytest.mark.parametrize("body,big,strict", [
    (str(ONE_MIB), True, False),
    ("262144", False, True),
], ids=["equal-to-the-buffer", "old-documented-minimum-strict"])
def test_a_body_limit_lambdas_batches_can_exceed_is_refused_naming_both(ext_bin, kinesalite, body, big, strict):
    """MAX_BODY_BYTES below Lambda's largest batch for the subscription's buffering
    (2 x maxBytes + envelopes: the simulator's batches of 1 MiB of events are already
    over 1 MiB of body) refused Lambda's normal batches, and Lambda dropped them. Now it
    is a configuration error naming both settings and the smallest limit that works:
    the extension idles (or, strict, fails the init) and never refuses a batch."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_MAX_BODY_BYTES=body, **(BIG_BUFFERS if big else {}))
    if strict:
        env["KINESIS_TELEMETRY_STRICT"] = "true"
    with LambdaSim(ext_bin, env) as sim:
        if strict:
            with pytest.raises(ExtensionInitError):
                sim.start()
            assert [e["error_type"] for e in sim.init_errors] == ["Extension.ConfigInvalid"]
            text = sim.init_errors[0]["json"]["errorMessage"]
            assert sim.init_failed == "Extension.ConfigInvalid" and sim.violations == [], sim.violations
        else:
            run_invokes(sim, 2, 9000, line_factory=_line)
            assert_clean_exit(sim, sim.shutdown(), pushback=True)
            assert sim.subscription is None
            text = next((l for l in sim.stderr_text().splitlines() if "invalid configuration" in l), "")
    needed = SMALLEST_SAFE_BODY if big else 2 * 262144 + 128 * 1000
    for part in (f'KINESIS_TELEMETRY_MAX_BODY_BYTES="{body}"', f"at least {needed}",
                 "KINESIS_TELEMETRY_BUFFER_MAX_BYTES", "KINESIS_TELEMETRY_BUFFER_MAX_ITEMS"):
        assert part in text, (part, text)
    assert kinesalite.read_all(name) == []


def test_the_smallest_body_limit_accepted_takes_lambdas_largest_batches(ext_bin, kinesalite):
    """The smallest MAX_BODY_BYTES accepted with Lambda's largest buffering: the
    batches of the run above (bodies over 1 MiB) are all taken, every line reaches the
    stream once (the final report too: the shutdown wait covers the 1 s buffering)."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_MAX_BODY_BYTES=str(SMALLEST_SAFE_BODY),
                  KINESIS_TELEMETRY_SHUTDOWN_WAIT_MS="1500", **BIG_BUFFERS)
    with LambdaSim(ext_bin, env) as sim:
        run_invokes(sim, 2, 9000, line_factory=_line)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    assert max(len(b) for b in sim.posted_bodies) > ONE_MIB, "no batch over 1 MiB: the test proves nothing"
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
    check_delivery(sim, recs)
