"""Soak tier (issue 21 item 6): production is mostly idle, long and quiet; the rest
of the suite is short and busy. Each test runs a longer shape of traffic and
asserts every line once on the stream (the oracle: what the simulator emitted)
and flat resources of the extension process, read from /proc by the simulator
(sim.resources()): RSS drift at most 10 % after warm-up, no growth in open files
or threads, and at most 1 ms of CPU per idle second (on default Lambda, where
the process is SIGSTOPped while frozen, during a thawed idle spell: a long
invocation that logs nothing).

Marked `soak`: build.sh runs them after the parallel tests, one at a time, with
the `timing` tests (they measure CPU and time idle spells). All of them together
take about a minute and a half on 2 cores."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest

from conftest import ext_env, new_stream
from delivery import assert_run_ok, own_records
from fault_proxy import FaultProxy, Faults
from lambda_sim import LambdaSim, Resources
from test_emulator_parity import assert_each_event_once

pytestmark = pytest.mark.soak

CPU_MS_PER_IDLE_S = 1.0
RSS_DRIFT = 0.10
METRICS_INTERVAL_MS = 1000
IDLE_S = 5.5  # >= 5 x METRICS_INTERVAL_MS
# What an idle spell may still legitimately do at its start: the flush by age of
# the burst's tail (FLUSH_INTERVAL_MS, 1 s) and one metrics record (an interval).
SETTLE_S = 2.5
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ms(a: Resources, b: Resources) -> float:
    """CPU the process used between two readings (schedstat ns when there, else ticks)."""
    if a.cpu_ns is not None and b.cpu_ns is not None:
        return (b.cpu_ns - a.cpu_ns) / 1e6
    return (b.cpu_ticks - a.cpu_ticks) * 1000.0 / CLK_TCK


def idle_spell(sim, seconds: float, settle_s: float = SETTLE_S) -> tuple[float, Resources]:
    """Nothing happens for `seconds` (the idle spell is the test, not a wait for a
    signal). Returns CPU ms per second over the spell after `settle_s`, and the
    resources at its end."""
    time.sleep(settle_s)
    a = sim.resources()
    time.sleep(seconds - settle_s)
    b = sim.resources()
    assert a is not None and b is not None, "the extension exited during an idle spell"
    return cpu_ms(a, b) / (b.t - a.t), b


def assert_flat(points: list[Resources], what: str) -> None:
    """Readings at the same point of a repeated cycle, the first after warm-up: RSS
    drift within 10 % of the first, open files and threads never above it."""
    first = points[0]
    for p in points[1:]:
        assert p.rss_kb <= first.rss_kb * (1 + RSS_DRIFT), (what, "RSS grew", [q.rss_kb for q in points])
        assert p.fds <= first.fds, (what, "open files grew", [q.fds for q in points])
        assert p.threads <= first.threads, (what, "threads grew", [q.threads for q in points])


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_lmi_bursts_and_idle_spells(ext_bin, kinesalite):
    """LMI, METRICS_INTERVAL_MS=1000: four 2 s bursts separated by 5.5 s idle
    spells, then SHUTDOWN. Every line once; at most 1 ms of CPU per idle second
    once the burst's tail is sent; at most two metrics records from each idle
    spell (the intervals the burst and its buffered tail ended in) and at least
    one per burst; RSS, open files
    and threads flat from spell to spell."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_METRICS_INTERVAL_MS=str(METRICS_INTERVAL_MS))
    bursts, spells, cpu, points = [], [], [], []
    with LambdaSim(ext_bin, env, managed_instances=True, seed=21) as sim:
        sim.start()
        for i in range(4):
            t0 = time.time()
            sim.run_traffic(1000, 2.0, concurrency=8, log_lines=10)
            bursts.append((t0, time.time()))
            if i == 3:
                break
            s0 = time.time()
            per_s, end = idle_spell(sim, IDLE_S)
            spells.append((s0, time.time()))
            cpu.append(per_s)
            points.append(end)
        res = sim.shutdown()
        assert_run_ok(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=20)
    assert_each_event_once(sim, recs)
    periodic = [_epoch(m["time"]) for m in own_records(recs, "metrics") if not m["record"]["final"]]
    from_idle = [sum(a < t <= b for t in periodic) for a, b in spells]
    during = [sum(a <= t <= b + 1.0 for t in periodic) for a, b in bursts]
    print(f"CPU ms per idle second {[round(c, 3) for c in cpu]}; RSS kB {[p.rss_kb for p in points]}; "
          f"fds {[p.fds for p in points]}; threads {[p.threads for p in points]}; "
          f"metrics records from idle spells {from_idle}, from bursts {during}")
    assert max(cpu) <= CPU_MS_PER_IDLE_S, f"CPU ms per idle second {cpu}"
    # At most the interval the burst ended in and the one Lambda's buffered tail
    # (its 1 s buffering timeout) arrived in: none for the idle intervals after
    # them (writing one per interval regardless would give 5 here).
    assert all(n <= 2 for n in from_idle), f"metrics records from idle spells {from_idle}"
    assert all(n >= 1 for n in during), f"metrics records during bursts {during}"
    assert_flat(points, "idle spell ends")


def test_default_lambda_2000_invokes_with_freezes(ext_bin, kinesalite):
    """Default Lambda: 2,000 invokes of 5 lines, frozen between them, then a thawed
    idle spell (an invocation that runs 3 s and logs nothing) and SHUTDOWN. Every
    line once; RSS, open files and threads flat from invoke 200 on; at most 1 ms of
    CPU per second of the thawed idle spell."""
    name, _ = new_stream(kinesalite)
    points = []
    with LambdaSim(ext_bin, ext_env(kinesalite, name), timeout_ms=8000) as sim:
        sim.start()
        for i in range(1, 2001):
            r = sim.invoke(log_lines=5)
            assert not r.timed_out, sim.stderr_text()[-2000:]
            if i % 200 == 0:
                points.append(sim.resources())  # frozen: /proc reads fine
        stop = sim.sample_resources(0.1)
        t0 = time.perf_counter()
        sim.invoke(log_lines=0, runtime_ms=3000)
        samples = stop()
        res = sim.shutdown()
        assert_run_ok(sim, res)
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=30)
    assert_each_event_once(sim, recs)
    # the invocation's first 0.5 s may carry the last invoke's report; then nothing is due
    spell = [s for s in samples if t0 + 0.5 <= s.t <= t0 + 2.9]
    assert len(spell) >= 10, len(samples)
    per_s = cpu_ms(spell[0], spell[-1]) / (spell[-1].t - spell[0].t)
    print(f"thawed idle CPU ms per second {per_s:.3f}; RSS kB {[p.rss_kb for p in points]}; "
          f"fds {[p.fds for p in points]}; threads {[p.threads for p in points]}")
    assert per_s <= CPU_MS_PER_IDLE_S, f"thawed idle: {per_s:.3f} ms of CPU per second"
    assert_flat(points, "every 200 invokes")


def test_lmi_refusal_outlives_several_probes_then_clears(ext_bin, kinesalite):
    """LMI: AccessDenied for the first 8 s (the policy attached late): a burst,
    an idle spell while parked (probes at growing intervals, several refused),
    then the refusal clears, a second burst, an idle spell, SHUTDOWN. Every line
    once, nothing counted lost; at most 1 ms of CPU per idle second, parked or
    not; open files and threads flat, RSS not above the parked spell's."""
    name, _ = new_stream(kinesalite)
    t_clear = time.monotonic() + 8.0
    rule = lambda i, headers: (400, "AccessDeniedException") if time.monotonic() < t_clear else None  # noqa: E731
    cpu, points = [], []
    with FaultProxy(kinesalite.endpoint, Faults(rule=rule)) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_METRICS_INTERVAL_MS=str(METRICS_INTERVAL_MS))
        with LambdaSim(ext_bin, env, managed_instances=True, seed=6) as sim:
            sim.start()
            sim.run_traffic(1000, 1.5, concurrency=8, log_lines=10)
            per_s, end = idle_spell(sim, t_clear - time.monotonic() + 0.5)  # parked all along
            cpu.append(per_s)
            points.append(end)
            refused = sum(p.error == "AccessDeniedException" for p in proxy.puts)
            # the first probe after the refusal cleared takes what was parked (no signal
            # but the proxy's log: polled)
            deadline = time.monotonic() + 20
            while not any(p.error is None and p.status == 200 for p in proxy.puts):
                assert time.monotonic() < deadline, [(p.error, p.status) for p in proxy.puts]
                time.sleep(0.05)
            sim.run_traffic(1000, 1.5, concurrency=8, log_lines=10)
            per_s, end = idle_spell(sim, IDLE_S)
            cpu.append(per_s)
            points.append(end)
            res = sim.shutdown()
            assert_run_ok(sim, res, proxy)
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=20)
    m = assert_each_event_once(sim, recs)
    print(f"refused probes {refused}; CPU ms per idle second {[round(c, 3) for c in cpu]}; "
          f"RSS kB {[p.rss_kb for p in points]}; fds {[p.fds for p in points]}; "
          f"threads {[p.threads for p in points]}; parkedRequests {m.get('parkedRequests')}")
    assert refused >= 3, f"the refusal should outlive several probes: {refused} refused"
    assert m["droppedAccessDenied"] == 0, m
    assert max(cpu) <= CPU_MS_PER_IDLE_S, f"CPU ms per idle second {cpu}"
    assert_flat(points, "idle spell ends")
