"""The extension under what AWS's own runtime interface emulator does in LMI mode
(shared/docs/managed-instances.md, last section; the simulator's options that
play it: tests/lambda_sim.py RIE_LMI, run_as, merged_lines, max_concurrency):
function lines as strings with JSON and request ids inside, one batch in
flight (the next held, or dropped as the emulator does), the extension as uid
993 / gid 990, merged and empty lines from workers sharing stdout, and
invocations refused with Runtime.Unavailable. The oracle is what the simulator
emitted: every event the extension received on the stream once."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading

import pytest

from conftest import assert_clean_exit, ext_env, new_stream
from delivery import final_metrics, lambda_records, own_records
from lambda_sim import RIE_LMI, RIE_UID_GID, LambdaSim

# Real Lambda holds a batch while one is in flight; RIE_LMI drops it (tested apart).
EMULATOR_HOLDING = {**RIE_LMI, "busy_batches": "hold"}


def _lmi(ext_bin, env, **kw) -> LambdaSim:
    return LambdaSim(ext_bin, env, managed_instances=True, **kw)


def assert_each_event_once(sim, recs) -> dict:
    """Every event the extension received is on the stream as many times as it was
    received (identical events, such as empty lines in one millisecond, count as
    many), nothing else but the extension's own records, and a final metrics record
    with nothing lost. Returns the final metrics."""
    on_stream = collections.Counter(r["data"] for r in lambda_records(recs))
    delivered = collections.Counter(sim.delivered)
    missing, extra = delivered - on_stream, on_stream - delivered
    assert not missing, (f"{sum(missing.values())} of {len(sim.delivered)} events missing, "
                         f"e.g. {next(iter(missing))[:200]!r}\n" + sim.stderr_text()[-2000:])
    assert not extra, f"{sum(extra.values())} events too many, e.g. {next(iter(extra))[:200]!r}"
    m = final_metrics(recs)
    assert m is not None and m["droppedRejected"] == 0 and m["droppedShutdown"] == 0, m
    return m


def _run(sim, n=200, lines=10, concurrency=8):
    sim.start()
    sim.invoke_concurrent(n, log_lines=lines, concurrency=concurrency)
    res = sim.shutdown()
    assert sim.crash is None, sim.crash
    return res


def test_string_records_with_json_inside_every_line_once(ext_bin, kinesalite):
    """Function lines as plain strings and the logger's JSON lines as escaped strings:
    forwarded byte for byte, every one once."""
    name, _ = new_stream(kinesalite)
    with _lmi(ext_bin, ext_env(kinesalite, name), seed=11, **EMULATOR_HOLDING) as sim:
        res = _run(sim)
        assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=20)
    assert_each_event_once(sim, recs)
    fn = [json.loads(e)["record"] for e in sim.delivered if b'"type":"function"' in e[:80]]
    assert len(fn) >= 2000 and all(isinstance(r, str) for r in fn)
    assert sum(r.startswith('{"timestamp"') for r in fn) >= 1500  # JSON text inside strings


def test_request_id_inside_a_string_record_is_the_records_request(ext_bin, kinesalite):
    """With the envelope and request partition keys, a JSON line that arrives as a
    string names its request as an object record does (the doc: handle objects and
    strings alike)."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_ENRICH="true", KINESIS_TELEMETRY_PARTITION_KEY="request")
    with _lmi(ext_bin, env, seed=5, **EMULATOR_HOLDING) as sim:
        res = _run(sim, n=24, lines=8, concurrency=6)
        assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=1, timeout=15)
    checked = 0
    for r in recs:
        v = json.loads(r["data"])
        event = v.get("event")
        if not event or event["type"] != "function" or not event["record"].startswith("{"):
            continue
        want = json.loads(event["record"]).get("requestId")
        if want is None:
            continue
        assert (v["requestId"], r["partition_key"]) == (want, want), v
        checked += 1
    assert checked >= 24 * 6, checked


def _stall_during_traffic(sim, stall_s: float) -> None:
    """Traffic for 3 s; in its middle the extension is stopped for stall_s (a CPU taken
    by the function's own threads): the POST then in flight stays unanswered."""
    done = threading.Event()

    def traffic():
        try:
            sim.run_traffic(1500, 3.0, concurrency=8, log_lines=10)
        finally:
            done.set()
    t = threading.Thread(target=traffic)
    t.start()
    done.wait(1.2)
    os.killpg(sim.pid, signal.SIGSTOP)
    done.wait(stall_s)
    os.killpg(sim.pid, signal.SIGCONT)
    t.join()


@pytest.mark.parametrize("mode", ["hold", "drop"])
def test_a_batch_ready_while_one_is_in_flight(ext_bin, kinesalite, mode):
    """One batch in flight: real Lambda holds the next (nothing lost); the emulator
    drops it and says so in platform.logsDropped. The extension forwards what it
    got once, the logsDropped events with it, and counts exactly what was dropped."""
    name, _ = new_stream(kinesalite)
    with _lmi(ext_bin, ext_env(kinesalite, name), seed=2, **{**RIE_LMI, "busy_batches": mode}) as sim:
        sim.start()
        _stall_during_traffic(sim, 0.5)
        res = sim.shutdown()
        assert sim.crash is None, sim.crash
        assert_clean_exit(sim, res, pushback=(mode == "drop"))
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=20)
    m = assert_each_event_once(sim, recs)
    if mode == "hold":
        assert sim.dropped == [] and m["lambdaDroppedRecords"] == 0, m
        return
    assert sim.busy_dropped_batches, "the stall did not make the emulator drop a batch"
    assert sorted(sim.lost_before_shutdown) == sorted(sim.dropped)
    drops = [json.loads(e)["record"] for e in sim.delivered if b'"platform.logsDropped"' in e[:80]]
    assert sum(d["droppedRecords"] for d in drops) == len(sim.dropped), drops
    assert m["lambdaDroppedRecords"] == len(sim.dropped), (m, len(sim.dropped))


def test_runs_as_the_emulators_uid_and_gid(ext_bin, kinesalite):
    """As uid 993 / gid 990 with no supplementary groups: it binds its listener,
    reads what it needs, and every line arrives once."""
    if os.geteuid() != 0:
        pytest.skip("running as another uid needs root (CI runs as root)")
    name, _ = new_stream(kinesalite)
    with _lmi(ext_bin, ext_env(kinesalite, name), run_as=RIE_UID_GID, **EMULATOR_HOLDING) as sim:
        sim.start()
        with open(f"/proc/{sim.pid}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        assert status["Uid"].split()[:2] == ["993", "993"] and status["Gid"].split()[:2] == ["990", "990"]
        assert status["Groups"].strip() == "", status["Groups"]
        sim.invoke_concurrent(100, log_lines=10, concurrency=8)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=20)
    assert_each_event_once(sim, recs)


def test_merged_and_empty_lines_are_forwarded(ext_bin, kinesalite):
    """Workers sharing stdout: a line's text and newline written apart give merged
    lines (two invocations' text in one record) and empty records. Telemetry still:
    every one on the stream once, nothing fails."""
    name, _ = new_stream(kinesalite)
    with _lmi(ext_bin, ext_env(kinesalite, name), seed=9, merged_lines=0.1, **EMULATOR_HOLDING) as sim:
        res = _run(sim, n=150, lines=10)
        assert_clean_exit(sim, res)
    assert len(sim.merged_records) >= 50 and sim.empty_records == len(sim.merged_records)
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=20)
    assert_each_event_once(sim, recs)
    on_stream = [json.loads(r["data"])["record"] for r in lambda_records(recs)
                 if b'"type":"function"' in r["data"][:80]]
    assert on_stream.count("") == sim.empty_records
    assert set(sim.merged_records) <= set(on_stream)


def test_invocations_refused_runtime_unavailable_leave_no_trace(ext_bin, kinesalite):
    """Four workers, six callers: some invocations are refused at once (400
    Runtime.Unavailable) and produce no telemetry; the rest arrive once, and the
    metrics count no invocation that never ran."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_ENRICH="true")
    with _lmi(ext_bin, env, seed=4, max_concurrency=4, **EMULATOR_HOLDING) as sim:
        sim.start()
        ran = sim.invoke_concurrent(120, log_lines=6, concurrency=6)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    assert sim.unavailable and len(ran) + len(sim.unavailable) == 120
    recs = kinesalite.read_all(name, expect=1, timeout=20)
    text = b"".join(r["data"] for r in recs)
    assert not any(rid.encode() in text for rid in sim.unavailable)
    events = [v["event"] for v in (json.loads(r["data"]) for r in recs) if "event" in v]
    starts = {e["record"]["requestId"] for e in events if e["type"] == "platform.start"}
    assert starts == {r.request_id for r in ran}
    assert own_records(recs, "metrics")[-1]["record"]["final"]
