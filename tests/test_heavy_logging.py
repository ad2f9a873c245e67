"""Heavy logging (issue 10, item 1): thousands of lines per invoke must not hold
the invoke past the time its sends need.

The defect this guards against: the dispatcher took the invoke's
`platform.runtimeDone` in while it was sending (a send first drains the
listener's channel), then blocked waiting for an event that had already come,
so every such invoke was held until its deadline (4.9 s of a 5 s timeout at
3,000 lines) while every event still arrived.

The bound is measured, not assumed: for each invoke, post-runtime (the
simulator's runtimeDone to the extension's next `event/next`) may exceed the
time PutRecords requests were in flight during that window only by SLACK_MS
(the Telemetry API's 25 ms buffering, the last POST, building requests).
"""

from __future__ import annotations

import pytest

from conftest import assert_clean_exit, ext_env, new_stream
from delivery import READ_TIMEOUT
from fault_proxy import Faults
from lambda_sim import LambdaSim
from stream_check import TimedProxy, assert_exactly_once

pytestmark = pytest.mark.timing

TIMEOUT_MS = 8000
INVOKES = 5
# Room for the work between requests (generous: 2 shared cores, Python peers); the
# defect holds each invoke ~7,900 ms.
SLACK_MS = 1000
MODES = ("end", "batch", "periodic", "adaptive")


def busy_ms(windows: list[tuple[float, float]], t0: float, t1: float) -> float:
    """Milliseconds of [t0, t1] during which at least one request was in flight."""
    spans = sorted((max(a, t0), min(b, t1)) for a, b in windows if b > t0 and a < t1)
    total, end = 0.0, t0
    for a, b in spans:
        a = max(a, end)
        if b > a:
            total += b - a
            end = b
    return total * 1000.0


def held_invokes(sim: LambdaSim, windows) -> list[str]:
    out = []
    nexts = sim.next_call_times[1:1 + len(sim.invoke_results)]
    for r, nxt in zip(sim.invoke_results, nexts):
        assert r.post_runtime_ms is not None, r
        rd = nxt - r.post_runtime_ms / 1000.0
        need = busy_ms(windows, rd, nxt)
        if r.post_runtime_ms > need + SLACK_MS:
            out.append(f"post-runtime {r.post_runtime_ms:.0f} ms with requests in flight {need:.0f} ms")
    return out


@pytest.mark.parametrize("lines,delay_ms", [(400, 0), (1500, 0), (3000, 0), (3000, 40)],
                         ids=["400", "1500", "3000", "3000-slow-sink"])
@pytest.mark.parametrize("mode", MODES)
def test_post_runtime_is_bounded_by_the_sends(ext_bin, kinesalite, mode, lines, delay_ms):
    """Every invoke ends as soon as its sends are done, whatever the line count and
    however runtimeDone falls among the sends (a slow sink spreads the sends across
    it); everything Lambda emitted is on the stream exactly once."""
    name, _ = new_stream(kinesalite, shards=2)
    with TimedProxy(kinesalite.endpoint, Faults(delay_ms=delay_ms)) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_FLUSH=mode, RUST_LOG="warn")
        with LambdaSim(ext_bin, env, timeout_ms=TIMEOUT_MS) as sim:
            sim.start()
            for _ in range(INVOKES):
                r = sim.invoke(log_lines=lines)
                assert not r.timed_out, sim.stderr_text()[-3000:]
            res = sim.shutdown()
            assert_clean_exit(sim, res)
        held = held_invokes(sim, [(p.t_start, p.t_end) for p in proxy.puts])
    assert not held, (mode, lines, held, [round(p) for p in sim.post_runtime_ms])
    assert sim.lost_before_shutdown == [], "Lambda could not deliver everything"
    recs = kinesalite.read_all(name, expect=len(sim.delivered) + 1, timeout=READ_TIMEOUT)
    assert_exactly_once(sim, [r["data"] for r in recs])


def test_busy_ms_counts_overlaps_once():
    assert busy_ms([(0.0, 1.0), (0.5, 1.5), (3.0, 4.0)], 0.0, 3.5) == pytest.approx(2000.0)
    assert busy_ms([(0.0, 1.0)], 2.0, 3.0) == 0.0
