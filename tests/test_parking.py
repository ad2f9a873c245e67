"""Refusals an operator can fix while the environment lives (issue 14):
AccessDenied (a policy attached late), ResourceNotFound (a stream still being
created), expired credentials that cannot be refreshed. The records are kept
(parked) and one probe request goes at growing intervals until one is
accepted; at SHUTDOWN they are tried again after 100, 200, 400, 400... ms
until the deadline (issue 21), then what is left is counted by cause.
Through the fault proxy in front of kinesalite; the oracle is what the
simulator emitted."""

from __future__ import annotations

import collections
import json
import statistics
import time

import pytest

import threading

from conftest import ext_env, new_stream, run_invokes, run_with_faults
from delivery import assert_run_ok, check_delivery, final_metrics, shutdown_counters
from fault_proxy import RESET_AFTER_UPSTREAM, FaultProxy, Faults
from lambda_sim import LambdaSim

def _for_seconds(seconds: float, entry):
    """A rule: `entry` for every request in the first `seconds`, then pass."""
    t0 = time.monotonic()
    return lambda i, headers: entry if time.monotonic() < t0 + seconds else None


def _run(ext_bin, emu, rule, invokes: int, lines: int, **env):
    """run_with_faults with the invokes spread over several seconds; and the stream."""
    sim, proxy, name = run_with_faults(ext_bin, emu, rule, invokes, lines, idle_ms=250, **env)
    return sim, proxy, emu.read_all(name, expect=len(sim.delivered) + 1, timeout=10)


@pytest.mark.parametrize("code", ["AccessDeniedException", "ResourceNotFoundException"])
def test_refused_for_five_seconds_then_allowed_every_line_once(ext_bin, kinesalite, code):
    """AccessDenied (the policy is attached a few seconds after the deploy) or
    ResourceNotFound (the stream is still being created) for the first 5 s, then
    allowed: every line on the stream exactly once, in order, nothing counted
    lost, one ERROR line saying what to fix, and probes, not a storm."""
    sim, proxy, recs = _run(ext_bin, kinesalite, _for_seconds(5.0, (400, code)), 28, 10)
    check_delivery(sim, recs, proxy)
    refused = [p for p in proxy.puts if p.error == code]
    # probes at 1, 2, 4 s (doubling) and one at the end of an invoke: a few, not dozens
    assert 1 <= len(refused) <= 6, [(p.error, p.records) for p in proxy.puts]
    err = sim.stderr_text()
    assert len([l for l in err.splitlines() if "ERROR" in l and code in l]) == 1, err
    assert "to fix:" in err and "records are kept" in err
    m = final_metrics(recs)
    assert m["droppedRejected"] == 0 and m["droppedShutdown"] == 0, m
    assert m["droppedAccessDenied"] == 0 and m["droppedStreamNotFound"] == 0, m
    assert m["parkedRequests"] == len(refused), (m, len(refused))


def test_expired_token_for_three_requests_with_environment_credentials(ext_bin, kinesalite):
    """Environment credentials cannot be refreshed: the first three requests are
    refused with ExpiredTokenException (one re-sign, then parked, then probes):
    every line arrives."""
    rule = lambda i, headers: (400, "ExpiredTokenException") if i < 3 else None  # noqa: E731
    sim, proxy, recs = _run(ext_bin, kinesalite, rule, 20, 10)
    check_delivery(sim, recs, proxy)
    assert [p.error for p in proxy.puts[:3]] == ["ExpiredTokenException"] * 3
    m = final_metrics(recs)
    assert m["droppedRejected"] == 0 and m["droppedCredentials"] == 0, m


@pytest.mark.timing
def test_access_denied_all_run_no_storm_no_wait_counted_by_cause(ext_bin, kinesalite):
    """A role that never gets kinesis:PutRecords: the records stay within the
    buffer cap, invokes are not held (post-runtime in steady state as with a
    working stream), the proxy sees a handful of probes, and at SHUTDOWN every
    record is counted lost under droppedAccessDenied, exit 0 inside the deadline."""
    rule = lambda i, headers: (400, "AccessDeniedException")  # noqa: E731
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint, Faults(rule=rule)) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES=str(2 << 20))
        with LambdaSim(ext_bin, env) as sim:
            sim.start()
            for _ in range(60):
                sim.invoke(log_lines=20, idle_ms=50)
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy, pushback=True)
    # the same run against a working stream: the steady-state reference
    name2, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name2)) as ref:
        ref.start()
        for _ in range(60):
            ref.invoke(log_lines=20, idle_ms=50)
        ref.shutdown()
    parked = statistics.median(sim.post_runtime_ms[10:])
    working = statistics.median(ref.post_runtime_ms[10:])
    assert parked <= working + 5, (parked, working)
    # ~6 s of invokes: probes at 1, 2, 4 s doubling; then SHUTDOWN's tries at
    # 0, 100, 300, 700, 1,100, 1,500 ms (and one for the metrics record)
    assert len(proxy.puts) <= 8 + 8, len(proxy.puts)
    assert max(sim.peak_rss_kb) < 2 * 1024 + 8 * 1024, max(sim.peak_rss_kb)
    counters = shutdown_counters(sim.stderr_text())
    assert counters["droppedAccessDenied"] == counters["eventsReceived"] + 1, counters  # + the metrics record
    assert counters["droppedRejected"] == 0 and counters["droppedShutdown"] == 0, counters
    assert res.exit_code == 0 and res.shutdown_ms < 2000, res
    assert kinesalite.read_all(name) == []


def test_record_ids_are_unique_and_equal_on_duplicates(ext_bin, kinesalite):
    """With the envelope, every record carries an `id`: one per event across a
    run with resets and ambiguous outcomes, and the same id on the duplicates
    those produce (what a consumer drops duplicates by)."""
    script = {3: RESET_AFTER_UPSTREAM, 6: RESET_AFTER_UPSTREAM, 9: "reset", 12: RESET_AFTER_UPSTREAM}
    rule = lambda i, headers: script.get(i)  # noqa: E731
    sim, proxy, name = run_with_faults(ext_bin, kinesalite, rule, 20, 10, KINESIS_TELEMETRY_ENRICH="true",
                                       KINESIS_TELEMETRY_FLUSH="end")
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=10)
    by_id = collections.defaultdict(set)
    copies = collections.Counter()
    for r in recs:
        v = json.loads(r["data"])
        if "id" not in v:
            continue  # the extension's own records may be bare
        by_id[v["id"]].add(json.dumps(v["event"], sort_keys=True))
        copies[v["id"]] += 1
    assert proxy.ambiguous, "no ambiguous outcome: the test did not make duplicates"
    assert all(len(events) == 1 for events in by_id.values()), "an id on two events"
    events = collections.Counter(e for es in by_id.values() for e in es)
    assert all(n == 1 for n in events.values()), "an event under two ids"
    assert any(n > 1 for n in copies.values()), "duplicates should exist and share their id"
    assert len(by_id) >= len(sim.delivered), (len(by_id), len(sim.delivered))


def _until_after_shutdown(entry, after_s: float, shutdown: dict):
    """A rule: `entry` for every request until `after_s` after SHUTDOWN was
    sent (the test sets shutdown["at"] just before it), then pass."""
    def rule(i, headers):
        at = shutdown.get("at")
        return entry if at is None or time.perf_counter() < at + after_s else None
    return rule


def _run_into_shutdown(ext_bin, emu, rule, shutdown: dict):
    """10 invokes × 50 lines through the fault proxy with `rule`; SHUTDOWN with
    shutdown["at"] (perf_counter) set just before it."""
    name, _ = new_stream(emu)
    with FaultProxy(emu.endpoint, Faults(rule=rule)) as proxy:
        with LambdaSim(ext_bin, ext_env(emu, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                                        KINESIS_TELEMETRY_FLUSH="end")) as sim:
            run_invokes(sim, 10, 50)
            shutdown["at"] = time.perf_counter()
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
    recs = emu.read_all(name, expect=len(sim.delivered) + 1, timeout=10)
    return sim, res, proxy, recs


@pytest.mark.parametrize("code", ["AccessDeniedException", "ResourceNotFoundException",
                                  "KMSAccessDeniedException", "ExpiredTokenException",
                                  "InvalidSignatureException"])
def test_a_refusal_that_ends_300_ms_after_shutdown_loses_nothing(ext_bin, kinesalite, code):
    """Every parking cause, refused from the first request until 300 ms after
    SHUTDOWN: the shutdown flush keeps trying inside its deadline, so every
    line is on the stream once, nothing is counted lost, and the extension
    exits before the deadline. (Before issue 21: one attempt, then 0 of 500
    lines.)"""
    shutdown = {}
    sim, res, proxy, recs = _run_into_shutdown(
        ext_bin, kinesalite, _until_after_shutdown((400, code), 0.3, shutdown), shutdown)
    check_delivery(sim, recs, proxy)
    assert len(sim.delivered) >= 500
    m = final_metrics(recs)
    assert m is not None, "the final metrics record is on the stream too"
    lost = {k: v for k, v in m.items() if k.startswith("dropped") and v}
    assert not lost, lost
    assert res.exit_code == 0 and res.shutdown_ms < 2000, res
    refused_at_shutdown = [p for p in proxy.puts if p.error == code and p.t_start >= shutdown["at"]]
    assert refused_at_shutdown, "no refusal after SHUTDOWN: the test did not test the window"


def test_an_outage_that_ends_500_ms_after_shutdown_loses_nothing(ext_bin, kinesalite):
    """The endpoint refuses connections from the last invokes until 500 ms
    after SHUTDOWN: every line on the stream, exit before the deadline."""
    name, _ = new_stream(kinesalite)
    with FaultProxy(kinesalite.endpoint, Faults()) as proxy:
        with LambdaSim(ext_bin, ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                                        KINESIS_TELEMETRY_FLUSH="end")) as sim:
            run_invokes(sim, 7, 50)
            proxy.stop_listening()
            for _ in range(3):
                assert not sim.invoke(log_lines=50).timed_out
            threading.Timer(0.5, proxy.start_listening).start()
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy)
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=10)
    check_delivery(sim, recs, proxy)
    m = final_metrics(recs)
    assert m is not None and m["droppedShutdown"] == 0, m
    assert res.exit_code == 0 and res.shutdown_ms < 2000, res
