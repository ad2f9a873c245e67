"""Flush modes (issue 5, "Cost and latency"): `end`, `batch`, `periodic` and
`adaptive` at sparse, bursty and steady invoke rates, frozen between invokes
like Lambda does. For each: delivery is complete (every delivered event on
the stream exactly once), no PutRecords is in flight when `event/next` is
called, data is on the stream within the mode's bound, and post-runtime time
(what the function's owner pays for) is what the mode promises.

Times are `time.perf_counter()` of this process: when the simulator's POST
carrying an event to the extension was answered (`sim.delivery_log`), when
the emulator accepted the record carrying it (`stream_check.TimedProxy`),
when each invoke began and when the extension called `event/next` after it
(`sim.next_call_times`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest

from conftest import assert_clean_exit, ext_env, new_stream
from lambda_sim import LambdaSim
from stream_check import TimedProxy, assert_exactly_once, is_own, median, received_at

pytestmark = pytest.mark.timing

INTERVAL_MS = 300  # KINESIS_TELEMETRY_FLUSH_INTERVAL_MS for periodic and adaptive
# Slack between our "received" (the simulator's POST answered) and the extension's: it
# stamps a record's age when its dispatcher thread takes it in, which on a loaded machine
# (or when the sandbox freezes in between) can be a little later.
SLACK_S = 0.15
RUNTIME_MS = 5
LINES = 6

# Rates: idle time after each invoke (frozen), in ms.
RATES = {
    "sparse": [400] * 6,  # gaps far above adaptive's MAX_DELAY_MS (200 here)
    "bursty": ([10] * 5 + [600]) * 3,  # bursts of 6, then a pause longer than the interval
    "steady": [40] * 30,  # ~60 ms between invokes, far below the interval
    "long": [50] * 6,  # with runtime_ms=450: invocations longer than the interval
}
MAX_DELAY_MS = {"sparse": 200, "bursty": 1000, "steady": 1000, "long": 5000}
MODES = ("end", "batch", "periodic", "adaptive")


def mode_env(mode: str, rate: str) -> dict:
    env = {"KINESIS_TELEMETRY_FLUSH": mode}
    if mode in ("periodic", "adaptive"):
        env["KINESIS_TELEMETRY_FLUSH_INTERVAL_MS"] = str(INTERVAL_MS)
    if mode == "adaptive":
        env["KINESIS_TELEMETRY_MAX_DELAY_MS"] = str(MAX_DELAY_MS[rate])
    return env


@dataclass
class Run:
    sim: LambdaSim
    proxy: TimedProxy
    starts: list[float]  # perf_counter just before each invoke (the thaw)
    nexts: list[float]  # perf_counter of the extension's event/next after each invoke
    shutdown_at: float
    recs: list[dict] = field(default_factory=list)


def run_schedule(ext_bin, emu, mode: str, rate: str, *, runtime_ms=RUNTIME_MS, lines=LINES,
                 spread_lines=False, extra_env=None) -> Run:
    name, _ = new_stream(emu)
    with TimedProxy(emu.endpoint) as proxy:
        env = ext_env(emu, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      **{**mode_env(mode, rate), **(extra_env or {})})
        with LambdaSim(ext_bin, env) as sim:
            sim.start()
            starts = []
            for idle in RATES[rate]:
                starts.append(time.perf_counter())
                r = sim.invoke(log_lines=lines, runtime_ms=runtime_ms, idle_ms=idle, spread_lines=spread_lines)
                assert not r.timed_out, sim.stderr_text()[-3000:]
            shutdown_at = time.perf_counter()
            res = sim.shutdown()
            assert_clean_exit(sim, res)
        nexts = sim.next_call_times[1:1 + len(starts)]
        assert len(nexts) == len(starts)
        run = Run(sim, proxy, starts, nexts, shutdown_at)
    run.recs = emu.read_all(name, expect=len(sim.delivered) + 1, timeout=15)
    return run


def belongs_to(event: bytes, rid: str, line_ids: set[str]) -> bool:
    """A function line, platform.start or platform.runtimeDone of the invoke `rid`."""
    v = json.loads(event)
    if v["type"] in ("platform.start", "platform.runtimeDone"):
        return v["record"].get("requestId") == rid
    if v["type"] == "function" and isinstance(v["record"], str):
        parts = v["record"].split(" ")
        return len(parts) > 1 and parts[1] in line_ids
    return False


def deadline_violations(run: Run, rule: str, age_s: float = 0.0) -> tuple[list[str], list[float]]:
    """Events that reached the stream later than the mode allows; and the latencies
    (s, received by the extension -> accepted by the emulator) of all events.

    rule "end": the invoke's own function lines, start and runtimeDone are on the
    stream before the extension's next after that invoke; anything else received
    during an invoke (reports, the extension's own log lines) by the end of the
    following one.
    rule "age": an event is on the stream by the end of the first invoke that began
    at least `age_s` after the extension received it (none such: the SHUTDOWN flush
    sends it, which completeness covers)."""
    sim, starts, nexts = run.sim, run.starts, run.nexts
    recv = received_at(sim)
    arrived = run.proxy.arrivals("json")
    per = LINES
    ids = sim.function_line_ids[sim.init_log_lines:]
    lines_of = [set(ids[i * per:(i + 1) * per]) for i in range(len(starts))]
    bad, lat = [], []
    for e in sim.delivered:
        if is_own(e):
            continue
        r, a = recv[e], arrived.get(e)
        assert a is not None, f"not accepted by the emulator: {e[:150]!r}"
        lat.append(a - r)
        j = None
        if rule == "age":
            j = next((k for k, s in enumerate(starts) if s >= r + age_s + SLACK_S), None)
        else:
            inside = next((k for k in range(len(starts)) if starts[k] <= r < nexts[k]), None)
            if inside is not None and belongs_to(e, sim.request_ids[inside], lines_of[inside]):
                j = inside
            elif inside is not None:
                j = inside + 1 if inside + 1 < len(starts) else None
            else:  # during init, or after a next before the freeze
                j = next((k for k, s in enumerate(starts) if s > r), None)
        if j is not None and a > nexts[j]:
            bad.append(f"{json.loads(e)['type']} received {r - starts[0]:.3f}s, due by the end of invoke {j} "
                       f"({nexts[j] - starts[0]:.3f}s), accepted {a - starts[0]:.3f}s: {e[:100]!r}")
    return bad, lat


def nothing_in_flight_at_next(run: Run) -> list[str]:
    """PutRecords requests the emulator was still working on when next was called."""
    out = []
    for t0, t1 in run.proxy.put_windows:
        for n in run.sim.next_call_times:
            if t0 < n < t1:
                out.append(f"next at {n:.4f} during PutRecords {t0:.4f}..{t1:.4f}")
    return out


def puts_before_shutdown(run: Run) -> int:
    return sum(1 for t0, _ in run.proxy.put_windows if t0 < run.shutdown_at)


# ----------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("rate", ["sparse", "bursty", "steady"])
@pytest.mark.parametrize("mode", MODES)
def test_flush_mode_delivers_within_its_bound(ext_bin, kinesalite, mode, rate):
    """All modes: every delivered event on the stream exactly once, no PutRecords in
    flight at any event/next.
    end, and adaptive at a sparse rate: each invoke's data on the stream before its
    next (rule "end"), one request or more per invoke, post-runtime >= 20 ms (steady)
    or >= 10 ms: it waits for runtimeDone.
    periodic and adaptive otherwise: data on the stream by the end of the first invoke
    that began FLUSH_INTERVAL_MS after the extension got it (rule "age"); at a steady
    rate median post-runtime < 5 ms and about one request per interval.
    batch: nothing before SHUTDOWN (BATCH_MAX_AGE_MS of thawed time never passes)."""
    run = run_schedule(ext_bin, kinesalite, mode, rate)
    sim, n = run.sim, len(run.starts)
    assert_exactly_once(sim, [r["data"] for r in run.recs])
    assert nothing_in_flight_at_next(run) == []
    post = sim.post_runtime_ms
    steady_post = median(post[4:] if rate != "sparse" else post[1:])  # past warm-up / cold start
    info = (f"{mode}/{rate}: puts before SHUTDOWN {puts_before_shutdown(run)} for {n} invokes, "
            f"post-runtime median {steady_post:.1f} ms (all: {[round(p, 1) for p in post]})")

    if mode == "end" or (mode == "adaptive" and rate == "sparse"):
        # on the stream right after each invoke
        bad, lat = deadline_violations(run, "end")
        assert not bad, (info, bad[:5])
        assert puts_before_shutdown(run) >= n, info
        # waits for runtimeDone (up to the Telemetry API's 25 ms buffering) + a round trip
        assert steady_post >= (20 if rate == "steady" else 10), info
    elif mode in ("periodic", "adaptive"):
        age = INTERVAL_MS / 1000.0
        bad, lat = deadline_violations(run, "age", age)
        assert not bad, (info, bad[:5])
        if rate == "steady":
            # steady state: no waiting for runtimeDone, sends overlap the function
            assert steady_post < 5, info
            # and one request per interval, not per invoke (+ adaptive's end-like warm-up)
            elapsed = run.shutdown_at - run.starts[0]
            assert puts_before_shutdown(run) <= elapsed / (INTERVAL_MS / 1000.0) + 4, (info, elapsed)
    else:  # batch: BATCH_MAX_AGE_MS (5 s of thawed time) never passes: all at SHUTDOWN
        lat = []
        assert puts_before_shutdown(run) == 0, info
    print(info, f"latency median {median(lat) * 1000:.0f} ms max {max(lat) * 1000:.0f} ms" if lat else "")


@pytest.mark.parametrize("mode", ["periodic", "adaptive"])
def test_long_invocations_are_flushed_during_the_invocation(ext_bin, kinesalite, mode):
    """Invocations longer than the interval: the extension stays thawed until
    runtimeDone and its timer sends aged data while the function still runs."""
    runtime_ms = 450
    run = run_schedule(ext_bin, kinesalite, mode, "long", runtime_ms=runtime_ms, spread_lines=True,
                       extra_env={"KINESIS_TELEMETRY_FLUSH_INTERVAL_MS": "100"})
    sim = run.sim
    assert_exactly_once(sim, [r["data"] for r in run.recs])
    assert nothing_in_flight_at_next(run) == []
    arrived = run.proxy.arrivals("json")
    recv = received_at(sim)
    ids = sim.function_line_ids[sim.init_log_lines:]
    early = []
    for k in range(3, len(run.starts)):  # after the duration estimate has settled
        end_k = run.starts[k] + runtime_ms / 1000.0
        lines = [e for e in sim.delivered if b'"type":"function"' in e[:80]
                 and any(i.encode() in e for i in ids[k * LINES:(k + 1) * LINES])]
        assert len(lines) == LINES
        # the first lines were received early in the invocation; they must be on the
        # stream before the function finished
        first = min(lines, key=lambda e: recv[e])
        early.append((arrived[first] - run.starts[k]) * 1000.0)
        assert arrived[first] < end_k, (k, early, sim.post_runtime_ms)
    print(mode, "first line of each long invoke on the stream after (ms):", [round(x) for x in early])
