"""Load (issue 3): a telemetry flood into a small buffer behind a slow sink, and
eight execution environments writing at once to one two-shard stream whose
per-shard write limits the fault proxy enforces like Kinesis does."""

from __future__ import annotations

import pytest

import collections
import hashlib
import json
import re
import threading
import time

from conftest import ext_env, new_stream
from delivery import (READ_TIMEOUT, assert_run_ok, check_delivery, final_metrics, lambda_records,
                      shutdown_counters)
from fault_proxy import Faults, FaultProxy, ShardLimits
from lambda_sim import LambdaSim

MIB = 1 << 20


# ----------------------------------------------------------------------------- flood


def test_flood_into_a_small_buffer_behind_a_slow_sink(ext_bin, kinesalite):
    """The function logs ~130 MB in four invokes (32 KB lines) at 128 MB of function
    memory with KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES=4 MiB, while the sink takes
    about 8 MB/s. The extension's peak RSS stays near its cap, the listener pushes
    back (so Lambda, i.e. the simulator, drops and reports platform.logsDropped),
    the drop report is forwarded, nothing crashes; two calm invokes afterwards
    arrive in full, and whatever the extension received is either on the stream
    or counted as lost."""
    name, _ = new_stream(kinesalite)
    filler = "".join(chr(0x41 + i % 26) for i in range(32 * 1024))
    big = lambda i, lid: f"{lid} #{i} {filler}"  # noqa: E731
    cap = 4 * MIB
    faults = Faults(bandwidth_bps=8 * MIB, delay_ms=50)
    with FaultProxy(kinesalite.endpoint, faults) as proxy:
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES=str(cap))
        with LambdaSim(ext_bin, env, memory_mb=128) as sim:
            sim.start()
            t0 = time.perf_counter()
            for _ in range(4):
                sim.invoke(log_lines=1000, line_factory=big)
            flood_s = time.perf_counter() - t0
            calm_from = len(sim.function_line_ids)
            for _ in range(2):
                sim.invoke(log_lines=10)
            calm_ids = sim.function_line_ids[calm_from:]
            res = sim.shutdown()
        assert_run_ok(sim, res, proxy, pushback=True)  # Lambda drops: asserted below
        produced = sum(len(e) for e in sim.produced if b'"type":"function"' in e[:60])
        assert produced > 120 * MIB, produced
        peak_kb = max(sim.peak_rss_kb)
        # cap + one 5 MiB request (base64 in flight) + the listener's bodies + runtime
        bound_kb = (cap + 12 * MIB) // 1024
        assert peak_kb < bound_kb, f"peak RSS {peak_kb} KiB over {bound_kb} KiB ({sim.peak_rss_kb})"
        assert sim.dropped, "the listener never pushed back: the simulator dropped nothing"
        recs = kinesalite.read_all(name, expect=sum(p.forwarded for p in proxy.puts), timeout=READ_TIMEOUT)
        types = collections.Counter(json.loads(r["data"])["type"] for r in lambda_records(recs))
        assert types["platform.logsDropped"] >= 1, types
        text = b"\n".join(r["data"] for r in recs if len(r["data"]) < 4096)
        missing_calm = [i for i in calm_ids if i.encode() not in text]
        assert not missing_calm, f"{len(missing_calm)} lines of the calm invokes missing"
        counters = shutdown_counters(sim.stderr_text())
        m = final_metrics(recs)
        # it read every drop report Lambda sent: exactly what was dropped, unless a POST
        # timed out while the extension pushed back and Lambda delivered it again (then
        # a report in it may be counted twice: at least what was dropped)
        assert m is not None and m["lambdaDroppedRecords"] >= len(sim.dropped) > 0, (m, len(sim.dropped))
        if not sim.post_errors:
            assert m["lambdaDroppedRecords"] == len(sim.dropped), (m, len(sim.dropped))
        lost = sum(v for k, v in counters.items() if k.startswith("dropped"))
        on_stream = collections.Counter(r["data"] for r in lambda_records(recs))
        missing = collections.Counter(sim.delivered) - on_stream
        assert sum(missing.values()) == lost, (sum(missing.values()), counters)
        print(f"\nflood: {produced / MIB:.0f} MiB produced in {flood_s:.1f} s, "
              f"{len(sim.dropped)} events dropped by the simulator, "
              f"{len(sim.delivered)} delivered to the extension, peak RSS {peak_kb} KiB, "
              f"{len(proxy.puts)} requests, counters {counters}")


def test_a_paused_dispatcher_keeps_to_the_memory_cap(ext_bin, kinesalite):
    """With periodic flushing the extension lets Lambda freeze the environment
    at the INVOKE, before the function runs: from then it may not send, nor keep
    a delivery waiting across the freeze, yet Lambda delivers everything the
    function logs until it returns. Here one invoke logs ~32 MB (32 KB lines
    spread over 1 s) at a 4 MiB cap: what arrives past the cap is refused (503,
    counted as refusedAtCap) and Lambda keeps it and delivers it again after the
    thaw, so peak RSS stays near the cap (it held all of it before: ~30 MiB) and
    the extension loses nothing: every event the simulator delivered is on the
    stream once (what Lambda's own bounded buffer could not hold meanwhile it
    dropped and reported, as real Lambda does)."""
    name, _ = new_stream(kinesalite)
    filler = "".join(chr(0x41 + i % 26) for i in range(32 * 1024))
    big = lambda i, lid: f"{lid} #{i} {filler}"  # noqa: E731
    cap = 4 * MIB
    env = ext_env(kinesalite, name, KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES=str(cap),
                  KINESIS_TELEMETRY_FLUSH="periodic")
    with LambdaSim(ext_bin, env, memory_mb=128) as sim:
        sim.start()
        sim.invoke(log_lines=1000, line_factory=big, runtime_ms=1000, spread_lines=True)
        refused_while_paused = sim.refusals
        calm_from = len(sim.function_line_ids)
        sim.invoke(log_lines=10)
        calm_ids = sim.function_line_ids[calm_from:]
        res = sim.shutdown()
    assert_run_ok(sim, res, pushback=True)
    assert sim.post_runtime_ms[0] == 0, sim.post_runtime_ms  # paused before the function ran
    assert refused_while_paused > 0, "the cap was never reached while paused"
    delivered_bytes = sum(len(e) for e in sim.delivered)
    assert delivered_bytes > cap, delivered_bytes  # more than the cap came through
    peak_kb = max(sim.peak_rss_kb)
    bound_kb = (cap + 12 * MIB) // 1024  # as in the flood above
    assert peak_kb < bound_kb, f"peak RSS {peak_kb} KiB over {bound_kb} KiB ({sim.peak_rss_kb})"
    counters = shutdown_counters(sim.stderr_text())
    assert counters.get("refusedAtCap", 0) == sim.refusals, (counters, sim.refusals)
    # a refused delivery is counted as received once, when it is taken
    assert counters["eventsReceived"] == len(sim.delivered), (counters, len(sim.delivered))
    recs = kinesalite.read_all(name, expect=len(sim.delivered), timeout=READ_TIMEOUT)
    text = b"\n".join(r["data"] for r in recs if len(r["data"]) < 4096)
    # Every calm line the extension took is on the stream. (One still refused
    # when the environment ends, because Lambda had not delivered it again by
    # the final flush, is lost with it: a known limit, docs/delivery.md.)
    taken = b"\n".join(sim.delivered)
    missing_calm = [i for i in calm_ids if i.encode() in taken and i.encode() not in text]
    assert not missing_calm, f"{len(missing_calm)} lines of the calm invoke missing"
    on_stream = collections.Counter(r["data"] for r in lambda_records(recs))
    missing = collections.Counter(sim.delivered) - on_stream
    assert not missing, (sum(missing.values()), counters)
    lost = {k: v for k, v in counters.items() if k.startswith("dropped") and v}
    if "was not delivered again in time and is lost" in sim.stderr_text():
        lost.pop("droppedShutdown", None)  # (the known limit above, told)
    assert not lost, lost
    print(f"\npaused flood: {delivered_bytes / MIB:.0f} MiB delivered, peak RSS {peak_kb} KiB, "
          f"{sim.refusals} deliveries refused, Lambda dropped {len(sim.dropped)} events of "
          f"{len(sim.delivered) + len(sim.dropped)}")


# ----------------------------------------------------------------------------- 8 environments


SIMS = 8
ROUNDS = 4
PER_SHARD_PER_ROUND = 1600  # > the 1,000 records/s a shard takes: every round throttles


def environment_key(sim: LambdaSim, timeout: float = 5.0) -> str | None:
    """The key from the extension's start-up log line. It is written before the
    first event/next, but the simulator reads the pipe on its own thread, so
    the line may reach stderr_text() a moment after start() returns."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(r"partition key \w+ ([0-9A-Za-z_-]+)\)", sim.stderr_text())
        if m or time.monotonic() > deadline:
            return m.group(1) if m else None
        time.sleep(0.01)


# Timing: eight environments at once on 2 cores; run alone.
@pytest.mark.timing
def test_eight_environments_share_a_throttled_two_shard_stream(ext_bin, kinesalite):
    """Eight extension processes (eight simulated execution environments, invoked
    in lock-step rounds) write to one two-shard stream through the per-shard-limit
    proxy (1,000 records/s and 1 MiB/s per shard). Each shard gets ~1,600 records
    per round however the environments' partition keys fell, so every round is
    throttled; backoff absorbs it: everything arrives, no environment starves."""
    name, _ = new_stream(kinesalite, shards=2)
    limits = ShardLimits(records_per_s=1000, bytes_per_s=MIB)
    with FaultProxy(kinesalite.endpoint, Faults(shard_limits=limits)) as proxy:
        ranges = proxy.shard_ranges(name)
        assert len(ranges) == 2
        env = ext_env(kinesalite, name, AWS_ENDPOINT_URL_KINESIS=proxy.endpoint,
                      KINESIS_TELEMETRY_FLUSH="end")
        sims = [LambdaSim(ext_bin, env, timeout_ms=6000, function_name=f"fn-{i}")
                for i in range(SIMS)]
        try:
            for s in sims:
                s.start()

            def shard_of(key):
                h = int(hashlib.md5(key.encode()).hexdigest(), 16)
                return next(sid for a, b, sid in ranges if a <= h <= b)

            keys = [environment_key(s) for s in sims]
            assert all(keys), [s.stderr_text()[-500:] for s in sims]
            on_shard = collections.Counter(shard_of(k) for k in keys)
            lines = [max(20, PER_SHARD_PER_ROUND // on_shard[shard_of(k)]) for k in keys]
            barrier = threading.Barrier(SIMS)
            errors = []

            def drive(i):
                try:
                    for _ in range(ROUNDS):
                        barrier.wait(timeout=60)
                        sims[i].invoke(log_lines=lines[i])
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append((i, repr(e)))
                    barrier.abort()

            t0 = time.perf_counter()
            threads = [threading.Thread(target=drive, args=(i,)) for i in range(SIMS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not errors, errors
            results = [None] * SIMS

            def stop(i):
                results[i] = sims[i].shutdown()

            stoppers = [threading.Thread(target=stop, args=(i,)) for i in range(SIMS)]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join(timeout=30)
            run_s = time.perf_counter() - t0
            for s, res in zip(sims, results):
                assert_run_ok(s, res)
        finally:
            for s in sims:
                s.close()
        assert proxy.shard_mismatches == 0  # the proxy's shard = the emulator's shard
        assert proxy.throttled_records > 0, "no record was throttled: the test did not load the shards"
        total = sum(len(s.delivered) for s in sims)
        recs = kinesalite.read_all(name, expect=total + SIMS, timeout=READ_TIMEOUT)
        by_key = collections.defaultdict(list)
        for r in recs:
            by_key[r["partition_key"]].append(r)
        for i, (s, k) in enumerate(zip(sims, keys)):
            mine = by_key.get(k, [])
            # Every environment got everything through. On 2 shared cores, eight
            # extensions and kinesalite can be slow enough that a request times
            # out after Kinesis took it: the resend is a duplicate the proxy saw
            # happen (check_delivery fails on any other), as the at-least-once
            # guarantee allows; a fifth of the records would be a storm.
            d = check_delivery(s, mine, proxy, max_dup_share=0.2)
            m = final_metrics(mine)
            assert m is not None and m["droppedShutdown"] == 0, (i, m)
        retried = sum(final_metrics(by_key[k])["recordsRetried"] for k in keys)
        assert retried >= proxy.throttled_records * 0.9, (retried, proxy.throttled_records)
        print(f"\nscale: {SIMS} environments, {total} events in {run_s:.1f} s, keys per shard "
              f"{dict(on_shard)}, throttled {proxy.throttled_records} "
              f"({dict(proxy.throttled_by_shard)}), {len(proxy.puts)} requests")
