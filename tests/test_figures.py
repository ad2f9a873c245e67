"""The documented figures (README.md, docs/delivery.md), each with a bound a
regression would break (issue 11, finding 7). Generous enough for 2 shared
cores, and run one at a time after the parallel tests (marker `timing`); the
exact figures come from the bench (`bench/run.sh`), which the docs name as
their source. The 200 ms shutdown margin is bounded in
test_faults.py::test_shutdown_while_the_sink_is_down."""

from __future__ import annotations

import statistics

import pytest

from conftest import assert_clean_exit, ext_env, new_stream
from lambda_sim import LambdaSim

pytestmark = pytest.mark.timing


def test_a_normal_run_stays_small_and_starts_fast(ext_bin, kinesalite):
    """docs/delivery.md: peak RSS ~2.4 MiB in normal runs (bound: 6 MiB); exec to the first
    event/next ~1 ms in the bench (bound here, through the Python simulator: 250 ms)."""
    name, _ = new_stream(kinesalite)
    with LambdaSim(ext_bin, ext_env(kinesalite, name)) as sim:
        sim.start()
        for _ in range(25):
            sim.invoke(log_lines=20)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    assert max(sim.peak_rss_kb) < 6 * 1024, sim.peak_rss_kb
    assert sim.init_ms is not None and sim.init_ms < 250, sim.init_ms


def test_end_mode_costs_one_buffering_window_and_a_round_trip(ext_bin, kinesalite):
    """docs/delivery.md: ~25-30 ms of post-runtime per invoke with `end` (at most the Telemetry
    API's 25 ms buffering + one PutRecords); bound: a median of at most 80 ms (and
    not 0: it does wait for the invoke's data)."""
    name, _ = new_stream(kinesalite)
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_FLUSH="end")
    with LambdaSim(ext_bin, env) as sim:
        sim.start()
        for _ in range(20):
            sim.invoke(log_lines=10, idle_ms=20)
        res = sim.shutdown()
        assert_clean_exit(sim, res)
    med = statistics.median(sim.post_runtime_ms[2:])
    assert 1 <= med <= 80, sim.post_runtime_ms
