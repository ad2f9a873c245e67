"""Delivery guarantees under faults (issue 3): the built extension under the
Lambda simulator, writing to a real kinesalite through `fault_proxy.FaultProxy`,
which injects what AWS and the network do to a Kinesis client.

Every test checks the same contract (see `delivery.py`):
* every event the extension received is on the stream, at least once; a
  duplicate is only allowed where the fault made the outcome ambiguous (the
  emulator got the request, the extension never got the answer) and must be
  rare; records lost on purpose (non-retryable errors, the shutdown deadline)
  are counted by the extension, and the count matches what the proxy saw;
* the shutdown deadline is never overrun (no SIGKILL, shutdown < 2 s), exit
  code 0, no protocol violation seen by the simulator.
"""

from __future__ import annotations

import collections
import re
import threading
import time

import pytest

from conftest import ext_env, new_stream
from delivery import (READ_TIMEOUT, assert_run_ok, check_delivery, final_metrics, lambda_records,
                      shutdown_counters)
from fault_proxy import (CLOSE, HANG, HANG_AFTER_UPSTREAM, PASS, RESET, RESET_AFTER_UPSTREAM,
                         Faults, FaultProxy)
from lambda_sim import LambdaSim

PTEE = "ProvisionedThroughputExceededException"
# Most tests pin the `end` flush policy (one flush per invoke, waited for before
# event/next) so that scripted faults meet a known sequence of requests.
END = {"KINESIS_TELEMETRY_FLUSH": "end"}


def run(sim: LambdaSim, invokes: int, lines: int, between=None, **kw):
    """start, invokes (calling between(i) after invoke i, while the extension is
    frozen), SHUTDOWN; returns the ShutdownResult."""
    sim.start()
    for i in range(invokes):
        sim.invoke(log_lines=lines, **kw)
        if between is not None:
            between(i)
    return sim.shutdown()


def read(emu, stream, sim, extra=1, timeout=READ_TIMEOUT):
    # + the extension's final metrics record
    return emu.read_all(stream, expect=len(sim.delivered) + extra, timeout=timeout)


# ----------------------------------------------------------------------------- 1. partial failures


def test_partial_failures_30_percent_mixed_codes(ext_bin, kinesalite):
    """30% of the records of every request fail, with PTEE and InternalFailure mixed
    in each answer: only those are resent, nothing is lost, nothing duplicated."""
    name, _ = new_stream(kinesalite)
    faults = Faults(record_fail_share=0.3, record_codes=(PTEE, "InternalFailure"), seed=3)
    with FaultProxy(kinesalite.endpoint, faults) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint, **END)
        with LambdaSim(ext_bin, env) as sim:
            res = run(sim, 15, 40)
        assert_run_ok(sim, res, proxy)
        recs = read(kinesalite, name, sim)
        d = check_delivery(sim, recs, proxy, ordered=False)  # per-record failures: no order
        # failed records never reached the emulator: resending them duplicates nothing
        assert d.duplicates == 0
        failed = sum(p.failed_records for p in proxy.puts)
        assert failed > 0.2 * len(sim.delivered), (failed, len(sim.delivered))
        # each answer mixed both codes; the extension resent each failed record once
        sent = sum(p.records for p in proxy.puts)
        assert sent == sum(proxy.accepted.values()) + failed
        m = final_metrics(recs)
        assert m is not None, "no final metrics record on the stream"
        assert m["droppedRejected"] == 0 and m["droppedShutdown"] == 0, m
        # (the metrics record is written before the last retries of the final flush)
        assert 0.9 * failed <= m["recordsRetried"] <= failed, (m, failed)


# ----------------------------------------------------------------------------- every flush mode

MODES = {
    "end": {},
    "adaptive": {"KINESIS_TELEMETRY_FLUSH_INTERVAL_MS": "200", "KINESIS_TELEMETRY_MAX_DELAY_MS": "2000"},
    "periodic": {"KINESIS_TELEMETRY_FLUSH_INTERVAL_MS": "200"},
    "batch": {"KINESIS_TELEMETRY_BATCH_MAX_AGE_MS": "150"},
}


def mixed_faults(i: int, headers: dict):
    """A request fault for every few requests, whatever their number: resets before
    and after the emulator got the request, whole-request errors, a timeout."""
    return {2: RESET, 5: (503, "ServiceUnavailable"), 8: RESET_AFTER_UPSTREAM, 11: HANG,
            14: (400, PTEE)}.get(i % 17)


@pytest.mark.parametrize("mode", list(MODES))
def test_fault_mix_in_every_flush_mode(ext_bin, kinesalite, mode):
    """Every flush mode under the same mix of faults (5 % of records refused by the
    shard; of every 17 requests, one reset, one 503, one ambiguous reset, one hung
    answer, one throttled): no request
    in flight at any event/next, everything Lambda emitted on the stream, duplicates
    only where the emulator got a request whose answer was lost, nothing counted
    lost, and the faults were actually met."""
    name, _ = new_stream(kinesalite)
    faults = Faults(record_fail_share=0.05, rule=mixed_faults, seed=7)
    with FaultProxy(kinesalite.endpoint, faults) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_FLUSH=mode, KINESIS_TELEMETRY_MAX_RECORDS_PER_REQUEST="10",
                      KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS="300", **MODES[mode])
        with LambdaSim(ext_bin, env) as sim:
            sim.start()
            for _ in range(16):
                sim.invoke(log_lines=20, runtime_ms=10, idle_ms=30)
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
        outcomes = proxy.outcomes()
        assert outcomes[RESET] and outcomes[HANG] and outcomes[RESET_AFTER_UPSTREAM] and outcomes["error"], \
            outcomes
        assert sum(p.failed_records for p in proxy.puts if p.outcome == "ok") > 0
    recs = read(kinesalite, name, sim, extra=1 + sum(proxy.ambiguous.values()))
    check_delivery(sim, recs, proxy, ordered=False)  # per-record failures: no order
    m = final_metrics(recs)
    assert m is not None and m["droppedShutdown"] == 0 and m["droppedRejected"] == 0, m


# ----------------------------------------------------------------------------- 2. request errors


def test_whole_request_throttling_and_5xx_bursts(ext_bin, kinesalite):
    """Bursts of whole-request errors: 400 PTEE / KMSThrottling / LimitExceeded and
    500 / 503, three in a row each, between successes. Retried with backoff,
    everything delivered once, the retries bounded."""
    name, _ = new_stream(kinesalite)
    burst = lambda status, typ, n=3: [(status, typ)] * n  # noqa: E731
    script = (burst(400, PTEE) + [PASS] * 2 + burst(400, "KMSThrottlingException") + [PASS]
              + burst(400, "com.amazonaws.kinesis#LimitExceededException") + [PASS]
              + burst(500, "InternalFailure") + [PASS] + burst(503, "ServiceUnavailable")
              + [PASS] + burst(400, PTEE, 4))
    with FaultProxy(kinesalite.endpoint, Faults(request_errors=list(script))) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint, **END)
        with LambdaSim(ext_bin, env) as sim:
            res = run(sim, 14, 20)
        assert_run_ok(sim, res, proxy)
        assert proxy.script_left == 0, "the bursts were not all used"
        errors = proxy.errors()
        assert errors[PTEE] == 7 and errors["ServiceUnavailable"] == 3, errors
        recs = read(kinesalite, name, sim)
        d = check_delivery(sim, recs, proxy)
        assert d.duplicates == 0
        # no retry storm: one request per error plus the successful ones
        ok = [p for p in proxy.puts if p.status == 200]
        assert len(proxy.puts) == len(ok) + len(script) - script.count(PASS)
        assert len(ok) <= 14 + 4, [(p.records, p.status) for p in proxy.puts]
        m = final_metrics(recs)
        assert m is not None and m["requestErrors"] >= 19 and m["droppedShutdown"] == 0, m


# ----------------------------------------------------------------------------- 3. connection faults


def test_connection_reset_mid_request(ext_bin, kinesalite):
    """The connection is reset while the request is being read (never reaches the
    emulator), or right after the emulator took it (ambiguous: the only case where
    a duplicate is acceptable). Everything arrives; duplicates only from the latter
    and counted by the extension as duplicate risk."""
    name, _ = new_stream(kinesalite)
    script = [PASS, RESET, PASS, RESET, RESET, PASS, RESET_AFTER_UPSTREAM, PASS, RESET, PASS,
              RESET_AFTER_UPSTREAM]
    with FaultProxy(kinesalite.endpoint, Faults(request_errors=list(script))) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint, **END)
        with LambdaSim(ext_bin, env) as sim:
            res = run(sim, 12, 20)
        assert_run_ok(sim, res, proxy)
        assert proxy.script_left == 0
        outcomes = proxy.outcomes()
        assert outcomes[RESET] == 4 and outcomes[RESET_AFTER_UPSTREAM] == 2, [(p.outcome, p.records) for p in proxy.puts]
        recs = read(kinesalite, name, sim, extra=1 + sum(proxy.ambiguous.values()))
        # two ambiguous requests of ~20 events among ~280: at most their records again
        d = check_delivery(sim, recs, proxy, max_dup_share=0.2)
        assert d.duplicates <= sum(proxy.ambiguous.values())
        m = final_metrics(recs)
        assert m is not None and m["droppedShutdown"] == 0, m
        # the extension knows which resends may duplicate: it counts at least those
        assert m["duplicateRisk"] >= d.duplicates, (m, d)


def test_response_never_comes_request_timeout(ext_bin, kinesalite):
    """The proxy reads the request and never answers, before or after forwarding it:
    KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS (300 here) fires, the batch is resent."""
    name, _ = new_stream(kinesalite)
    script = [PASS, HANG, PASS, HANG, HANG, PASS, HANG_AFTER_UPSTREAM, PASS, CLOSE, PASS]
    with FaultProxy(kinesalite.endpoint, Faults(request_errors=list(script))) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS="300", **END)
        with LambdaSim(ext_bin, env) as sim:
            res = run(sim, 10, 20)
        assert_run_ok(sim, res, proxy)
        assert proxy.script_left == 0
        recs = read(kinesalite, name, sim, extra=1 + sum(proxy.ambiguous.values()))
        d = check_delivery(sim, recs, proxy, max_dup_share=0.15)  # one ambiguous request
        m = final_metrics(recs)
        assert m is not None and m["droppedShutdown"] == 0, m
        assert m["duplicateRisk"] >= d.duplicates, (m, d)
        # a hung request costs about one request timeout, not the invoke's deadline
        assert max(sim.post_runtime_ms) < 1500, sim.post_runtime_ms


def test_endpoint_refuses_connections_then_comes_back(ext_bin, kinesalite):
    """The endpoint refuses connections for 2.5 s (listening socket closed, open
    connections reset), then listens again on the same port. Flushes during the
    outage fail fast and keep their records; the first flush after it sends them."""
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint, **END)
        outage = {}

        def between(i):
            if i == 2:
                outage["t"] = proxy.refuse_for(2.5)
                outage["puts_before"] = len(proxy.puts)

        with LambdaSim(ext_bin, env) as sim:
            sim.start()
            for i in range(12):
                sim.invoke(log_lines=15, idle_ms=250)
                between(i)
            outage["t"].join()
            assert proxy.listening
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
        recs = read(kinesalite, name, sim)
        d = check_delivery(sim, recs, proxy)
        assert d.duplicates == 0  # refused connections never reach the emulator
        m = final_metrics(recs)
        assert m is not None and m["droppedShutdown"] == 0, m
        assert m["requestErrors"] >= 1, m  # the outage was felt
        # no invoke waited out its deadline on the dead endpoint
        assert max(sim.post_runtime_ms) < 1500, sim.post_runtime_ms


# ----------------------------------------------------------------------------- 5. non-retryable


NON_RETRYABLE = [(400, "ValidationException"), (400, "InvalidArgumentException"),
                 (400, "SerializationException")]


def test_non_retryable_errors_one_clear_line_each_counted_no_storm(ext_bin, kinesalite):
    """The first six requests get Validation, InvalidArgument, Serialization (each
    twice: refusals of a request's content, which no operator action makes
    acceptable), then the stream works. Each code is logged once at ERROR with
    what to do; the lost records are counted exactly (shutdown log line and the
    final metrics record agree with the proxy); none of them is retried; the
    rest arrives. (Refusals an operator can fix are parked: test_parking.py.)"""
    name, _ = new_stream(kinesalite)
    rule = lambda i, headers: NON_RETRYABLE[i % 3] if i < 6 else None  # noqa: E731
    with FaultProxy(kinesalite.endpoint, Faults(rule=rule)) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint, **END)
        with LambdaSim(ext_bin, env) as sim:
            res = run(sim, 10, 10)
        assert_run_ok(sim, res, proxy)
        err = sim.stderr_text()
        rejected = [p for p in proxy.puts if p.error]
        assert len(rejected) == 6, proxy.puts
        lost = sum(p.records for p in rejected)
        for _, code in NON_RETRYABLE:
            lines = [l for l in err.splitlines() if "ERROR" in l and code in l]
            assert len(lines) == 1, (code, lines)
            assert re.search(rf"PutRecords failed, \d+ records lost: {code}", lines[0]), lines[0]
            assert "to fix:" in lines[0], lines[0]
        assert "KINESIS_TELEMETRY_MAX_RECORD_BYTES" in err  # Validation: what to lower
        # no retry storm: a rejected batch is not sent again
        assert len(proxy.puts) <= 6 + 10 + 2, len(proxy.puts)
        counters = shutdown_counters(err)
        assert counters.get("droppedRejected") == lost, (counters, lost)
        recs = read(kinesalite, name, sim, extra=1 - lost)
        lambda_on_stream = lambda_records(recs)
        assert len(lambda_on_stream) == len(sim.delivered) - lost
        m = final_metrics(recs)
        assert m is not None, "no final metrics record"
        assert m["droppedRejected"] == lost and m["requestErrors"] == 6, m


# ----------------------------------------------------------------------------- 6. freezes


# Timing: whether a connection sits pooled at a freeze depends on requests
# finishing before it; under parallel load they sometimes do not.
@pytest.mark.timing
@pytest.mark.parametrize("mode", ["rst", "fin", "blackhole"])
def test_freeze_kills_pooled_connections(ext_bin, kinesalite, mode):
    """Events stay buffered across freezes (batch mode, a 10-minute max age,
    50-record requests so full batches keep a connection pooled) while the proxy
    kills the pooled keep-alive connections during the freeze: reset, closed, or
    (blackhole) silently dead, never answering.

    A real freeze of minutes or hours (NAT/load-balancer idle timeouts) is too
    slow for CI; its effect on the extension, pooled connections that are dead
    on thaw, is emulated by killing them while the process is SIGSTOPped.

    Reset and closed connections are noticed when used and retried on a fresh
    one. A silently dead connection cannot be noticed; what protects against
    it is that connections idle longer than CONNECTION_MAX_IDLE_MS (20 s by
    default; the monotonic clock runs through freezes) are never reused, so
    for the blackhole case the freeze is made longer than a lowered limit."""
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint) as proxy:
        extra = {"KINESIS_TELEMETRY_CONNECTION_MAX_IDLE_MS": "100"} if mode == "blackhole" else {}
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_FLUSH="batch", KINESIS_TELEMETRY_BATCH_MAX_AGE_MS="600000",
                      KINESIS_TELEMETRY_MAX_RECORDS_PER_REQUEST="50", **extra)
        killed = []

        def between(i):
            assert sim.frozen
            if i in (1, 4, 7):  # 7: the last freeze, SHUTDOWN comes next
                killed.append(proxy.kill_idle_connections(mode))

        with LambdaSim(ext_bin, env) as sim:
            res = run(sim, 8, 40, between=between, idle_ms=300 if mode == "blackhole" else 30)
        assert_run_ok(sim, res, proxy)
        assert sum(killed) >= 2, killed  # there were pooled connections to kill
        assert sim.freeze_count >= 8
        recs = read(kinesalite, name, sim)
        d = check_delivery(sim, recs, proxy)
        assert d.duplicates == 0  # requests on dead connections never reached the emulator
        m = final_metrics(recs)
        assert m is not None and m["droppedShutdown"] == 0, m
        # a dead pooled connection costs at most one request timeout (2 s), never the invoke
        assert max(sim.post_runtime_ms) < 2500, sim.post_runtime_ms


# ----------------------------------------------------------------------------- deadlines


@pytest.mark.parametrize("flush", ["default", "batch"])
def test_a_slow_sink_never_makes_an_invoke_miss_its_deadline(ext_bin, kinesalite, flush):
    """A sink taking 1 s per request, 1,600 log lines at the start of a 1.5 s invoke
    with a 2 s timeout: full batches go out in the background while the function
    runs, and one of them is still in flight when runtimeDone arrives ~0.5 s
    before the deadline. The extension must still call event/next before the
    deadline (Lambda would otherwise time the invoke out), whatever the flush
    policy; what it could not send goes later."""
    name, _ = new_stream(kinesalite)
    extra = {} if flush == "default" else {"KINESIS_TELEMETRY_FLUSH": "batch",
                                           "KINESIS_TELEMETRY_BATCH_MAX_AGE_MS": "600000"}
    with FaultProxy(kinesalite.endpoint, Faults(delay_ms=1000)) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint, **extra)
        with LambdaSim(ext_bin, env, timeout_ms=2000, buffer_cap_bytes=64 << 20) as sim:
            sim.start()
            sim.invoke(log_lines=1600, runtime_ms=1500)
            for _ in range(3):  # calm invokes, so the backlog can drain
                sim.invoke(log_lines=5, idle_ms=50)
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
        # the precondition: the long invoke left requests to send. The default mode (end-like
        # while it learns the rate) waits for runtimeDone with one in flight; batch calls
        # event/next at once and never has one in flight then, so it sends them later.
        t_rd = sim.next_call_times[1] - sim.invoke_results[0].post_runtime_ms / 1000.0
        if flush == "default":
            assert any(p.t_start < t_rd < p.t_end for p in proxy.puts), "no request in flight at runtimeDone"
        else:
            assert sum(p.records for p in proxy.puts if p.t_start > sim.next_call_times[1]) >= 500, proxy.puts
        recs = read(kinesalite, name, sim, extra=1 + sum(proxy.ambiguous.values()))
        counters = shutdown_counters(sim.stderr_text())
        on_stream = collections.Counter(r["data"] for r in lambda_records(recs))
        missing = collections.Counter(sim.delivered) - on_stream
        metrics_lost = 0 if final_metrics(recs) is not None else 1
        # exactly what is missing is counted, nothing more and nothing less
        assert sum(missing.values()) + metrics_lost == counters.get("droppedShutdown", 0), (
            sum(missing.values()), metrics_lost, counters)
        check_delivery(sim, recs, proxy, lost=missing)


@pytest.mark.timing  # each request must finish within its 400 ms budget
def test_full_requests_keep_going_out_after_the_send_window_ends(ext_bin, kinesalite):
    """A 12 s invoke logs 4,000 lines at its start, then nothing until runtimeDone;
    the sink takes 100 ms per request and the send window (FLUSH_TIMEOUT_MS) is
    400 ms, so the first window ends with full requests still queued and no event,
    control message or backoff left to wake the dispatcher: it must go round again
    by itself and send them while the function runs, each request with its own
    time budget (not cut at the window's end: that was a false timeout, a backoff
    and a duplicate). Before the fix, the rest waited for runtimeDone."""
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint, Faults(delay_ms=100)) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_FLUSH="end", KINESIS_TELEMETRY_FLUSH_TIMEOUT_MS="400",
                      KINESIS_TELEMETRY_METRICS_INTERVAL_MS="0")
        with LambdaSim(ext_bin, env, timeout_ms=17000) as sim:
            sim.start()
            invoke = threading.Thread(target=sim.invoke, kwargs={"log_lines": 4000, "runtime_ms": 12000})
            invoke.start()
            deadline = time.monotonic() + 8
            forwarded = 0
            while time.monotonic() < deadline and forwarded < 4000:
                with proxy.lock:
                    forwarded = sum(p.forwarded for p in proxy.puts)
                time.sleep(0.02)
            still_running = invoke.is_alive()
            invoke.join()
            res = sim.shutdown()
        assert still_running, "the invoke ended before the check: the test proves nothing"
        assert forwarded >= 4000, f"only {forwarded} records sent before runtimeDone"
        assert set(proxy.outcomes()) == {"ok"}, proxy.outcomes()
        assert "CredentialsError" not in sim.stderr_text()
        assert_run_ok(sim, res, proxy)
        check_delivery(sim, read(kinesalite, name, sim), proxy)


# ----------------------------------------------------------------------------- 7. shutdown


def test_shutdown_with_10000_buffered_events_and_a_slow_sink(ext_bin, kinesalite):
    """Over 10,000 events buffered at SHUTDOWN (batch mode, 10-minute max age; a
    sink taking 1 s per request sends only a few full batches during the invokes).
    The extension sends until just before the deadline, exits before it, and
    counts exactly what it could not send."""
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint, Faults(delay_ms=1000)) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_FLUSH="batch", KINESIS_TELEMETRY_BATCH_MAX_AGE_MS="600000")
        with LambdaSim(ext_bin, env, buffer_cap_bytes=64 << 20, timeout_ms=4000) as sim:
            sim.start()
            for _ in range(2):
                sim.invoke(log_lines=7000)
            sent_before = sum(p.forwarded for p in proxy.puts)
            t_shutdown = time.perf_counter()
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
        buffered_at_shutdown = len(sim.delivered) - sent_before
        assert buffered_at_shutdown >= 10000, buffered_at_shutdown
        during = [p for p in proxy.puts if p.t_start >= t_shutdown]
        assert during and all(p.outcome in ("ok", "client_gone") for p in during), during
        # it kept sending until close to the deadline (2 s, minus its 200 ms margin)
        last = max(p.t_end for p in during if p.outcome == "ok")
        assert last - t_shutdown > 1.0, [(round(p.t_start - t_shutdown, 3), p.outcome) for p in during]
        counters = shutdown_counters(sim.stderr_text())
        recs = kinesalite.read_all(name, expect=sum(p.forwarded for p in proxy.puts), timeout=READ_TIMEOUT)
        on_stream = lambda_records(recs)
        metrics_on_stream = final_metrics(recs) is not None
        # every event is either on the stream or counted as lost at shutdown
        assert counters.get("droppedShutdown", 0) > 0, counters
        assert len(on_stream) + counters["droppedShutdown"] == \
            counters["eventsReceived"] + (0 if metrics_on_stream else 1), (len(on_stream), counters)
        assert counters["eventsReceived"] == len(sim.delivered), (counters, len(sim.delivered))
        check_delivery(sim, recs, proxy, lost=collections.Counter(sim.delivered))


@pytest.mark.timing
def test_shutdown_while_the_sink_is_down(ext_bin, kinesalite):
    """SHUTDOWN with events buffered while the endpoint refuses connections: exit
    before the deadline, the loss counted in the shutdown summary line. docs/delivery.md:
    the final flush gives up 200 ms before Lambda's 2 s deadline; bound: exit
    between 1.5 s and 1.9 s after SHUTDOWN (run one at a time: marker timing)."""
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_FLUSH="batch", KINESIS_TELEMETRY_BATCH_MAX_AGE_MS="600000")
        with LambdaSim(ext_bin, env) as sim:
            sim.start()
            for _ in range(5):
                sim.invoke(log_lines=30)
            proxy.stop_listening()
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
        assert 1500 <= res.shutdown_ms <= 1900, res
        assert proxy.puts == []
        err = sim.stderr_text()
        counters = shutdown_counters(err)
        # everything it received, plus its own metrics record, is counted as lost
        assert counters.get("droppedShutdown") in (len(sim.delivered), len(sim.delivered) + 1), \
            (counters, len(sim.delivered))
        assert re.search(r"shutdown deadline: \d+ records .* lost", err), err[-2000:]
    assert kinesalite.read_all(name) == []
