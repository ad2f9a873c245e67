"""Long soak (issue 21 item 6; not part of CI): the extension on Lambda Managed
Instances for 30 minutes in the simulator, bursts of traffic separated by long
idle spells, into kinesalite. The extension process is read from /proc every
second (tests/lambda_sim.py sim.resources(): RSS, open files, threads, CPU
time of all its threads). Writes bench/soak-results.json (every sample, the
phases, the summary) and bench/soak-results.md; bench/soak.sh draws
bench/soak.png (RSS, CPU and threads over time) from the JSON.

    bench/soak.sh [--minutes 30] [--burst-s 20] [--idle-s 100] [--rate 500]
    .deps/venv/bin/python bench/soak.py --minutes 1 --burst-s 5 --idle-s 10   (a check of the script)

Summary: RSS at the end of the first idle spell (after warm-up) against the
last and the highest, open files and threads (first, highest), CPU per idle
second (each spell after its first SETTLE_S: the burst's tail flushed by age
and one metrics record), CPU per 1,000 events over the bursts, every event
the extension received on the stream once, the metrics records.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import emulators  # noqa: E402
from lambda_sim import LambdaSim, Resources  # noqa: E402

BIN = os.environ.get("EXTENSION_BIN") or str(ROOT / "layer/extensions/kinesis-telemetry-extension")
TICKS = os.sysconf("SC_CLK_TCK")
SETTLE_S = 2.5
OWN = b'"type":"kinesis-telemetry-extension.'


def cpu_ms(a: Resources, b: Resources) -> float:
    if a.cpu_ns is not None and b.cpu_ns is not None:
        return (b.cpu_ns - a.cpu_ns) / 1e6
    return (b.cpu_ticks - a.cpu_ticks) * 1000.0 / TICKS


def read_stream(emu, name: str) -> list[bytes]:
    """Every record's data, in shard order (one page loop per shard to the tip)."""
    k = emu.kinesis
    out = []
    for s in k.describe_stream(StreamName=name)["StreamDescription"]["Shards"]:
        it = k.get_shard_iterator(StreamName=name, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"]
        while it:
            page = k.get_records(ShardIterator=it, Limit=10000)
            out.extend(bytes(r["Data"]) for r in page["Records"])
            if not page["Records"]:
                break
            it = page.get("NextShardIterator")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--burst-s", type=float, default=20.0, help="seconds of traffic per cycle")
    ap.add_argument("--idle-s", type=float, default=100.0, help="seconds of nothing after each burst")
    ap.add_argument("--rate", type=float, default=500.0, help="events per second during a burst")
    ap.add_argument("--metrics-interval-ms", type=int, default=10000,
                    help="KINESIS_TELEMETRY_METRICS_INTERVAL_MS (idle spells should be several of these)")
    ap.add_argument("--sample-s", type=float, default=1.0)
    ap.add_argument("--out", default=str(ROOT / "bench/soak-results"), help="path without extension")
    a = ap.parse_args()
    if a.idle_s <= SETTLE_S + 1:
        ap.error(f"--idle-s must exceed {SETTLE_S + 1} s (the first {SETTLE_S} s of a spell are not counted idle)")

    emu = emulators.start_kinesalite()
    name = "soak-" + uuid.uuid4().hex[:8]
    emu.create_stream(name, 2)
    env = {"KINESIS_TELEMETRY_STREAM": name, "AWS_REGION": emu.region, "AWS_ENDPOINT_URL_KINESIS": emu.endpoint,
           "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
           "KINESIS_TELEMETRY_METRICS_INTERVAL_MS": str(a.metrics_interval_ms)}
    phases = []  # {"kind": "burst"|"idle", "t0", "t1"} in seconds since start
    events = 0
    try:
        with LambdaSim(BIN, env, managed_instances=True, capture_extension_logs=True, seed=1) as sim:
            sim.start()
            t_start = time.perf_counter()
            stop = sim.sample_resources(a.sample_s)
            end = t_start + a.minutes * 60.0
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                tr = sim.run_traffic(a.rate, min(a.burst_s, max(0.5, end - t0)), concurrency=8, log_lines=10)
                events += tr.events
                t1 = time.perf_counter()
                phases.append({"kind": "burst", "t0": t0 - t_start, "t1": t1 - t_start, "events": tr.events})
                idle = min(a.idle_s, end - t1)
                if idle <= 0:
                    break
                time.sleep(idle)  # the idle spell is the measurement
                phases.append({"kind": "idle", "t0": t1 - t_start, "t1": time.perf_counter() - t_start})
                print(f"{(time.perf_counter() - t_start) / 60:5.1f} min: {events:,} events; "
                      f"{sim.resources()}", flush=True)
            samples = stop()
            res = sim.shutdown()
            delivered = list(sim.delivered)
            stderr_tail = sim.stderr_text()[-2000:]
        on_stream = read_stream(emu, name)
    finally:
        emu.stop()

    rel = [dict(t=s.t - t_start, rss_kb=s.rss_kb, fds=s.fds, threads=s.threads, cpu_ticks=s.cpu_ticks,
                cpu_ns=s.cpu_ns) for s in samples]
    by_t = [(s.t - t_start, s) for s in samples]

    def at(t):  # the last sample at or before t
        best = None
        for ts, s in by_t:
            if ts <= t:
                best = s
        return best

    idle_cpu = []
    for p in phases:
        if p["kind"] != "idle" or p["t1"] - p["t0"] <= SETTLE_S + 1:
            continue
        s0, s1 = at(p["t0"] + SETTLE_S), at(p["t1"])
        if s0 is not None and s1 is not None and s1.t > s0.t:
            p["cpu_ms_per_s"] = cpu_ms(s0, s1) / (s1.t - s0.t)
            p["end"] = {"rss_kb": s1.rss_kb, "fds": s1.fds, "threads": s1.threads}
            idle_cpu.append(p["cpu_ms_per_s"])
    burst_cpu = 0.0
    for p in phases:
        if p["kind"] == "burst":
            s0, s1 = at(p["t0"]), at(p["t1"] + SETTLE_S)
            if s0 is not None and s1 is not None:
                burst_cpu += cpu_ms(s0, s1)
    ends = [p["end"] for p in phases if "end" in p]
    lam = collections.Counter(d for d in on_stream if OWN not in d[:120])
    missing = collections.Counter(delivered) - lam
    extra = lam - collections.Counter(delivered)
    metrics = [json.loads(d) for d in on_stream if b'"type":"kinesis-telemetry-extension.metrics"' in d[:120]]
    summary = {
        "minutes": a.minutes, "burst_s": a.burst_s, "idle_s": a.idle_s, "rate": a.rate,
        "metrics_interval_ms": a.metrics_interval_ms, "events": events, "delivered": len(delivered),
        "missing_from_stream": sum(missing.values()), "extra_on_stream": sum(extra.values()),
        "metrics_records": len(metrics), "exit_code": res.exit_code, "killed": res.killed,
        "rss_kb_after_warmup": ends[0]["rss_kb"] if ends else None,
        "rss_kb_last": ends[-1]["rss_kb"] if ends else None,
        "rss_kb_max": max(s["rss_kb"] for s in rel) if rel else None,
        "fds_first_max": [ends[0]["fds"], max(e["fds"] for e in ends)] if ends else None,
        "threads_first_max": [ends[0]["threads"], max(e["threads"] for e in ends)] if ends else None,
        "idle_cpu_ms_per_s_max": max(idle_cpu) if idle_cpu else None,
        "idle_cpu_ms_per_s_median": sorted(idle_cpu)[len(idle_cpu) // 2] if idle_cpu else None,
        "burst_cpu_ms_per_1000_events": burst_cpu / max(1, events) * 1000.0,
        "machine_load": os.getloadavg(),
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "phases": phases, "samples": rel}, indent=1))
    drift = (summary["rss_kb_last"] / summary["rss_kb_after_warmup"] - 1) * 100 if ends else float("nan")
    md = [
        f"Soak, Lambda Managed Instances, {a.minutes:g} min: {a.burst_s:g} s bursts at {a.rate:g} events/s "
        f"(8 invocations at once) every {a.burst_s + a.idle_s:g} s, kinesalite; `bench/soak.sh` "
        f"({summary['when']}, load {', '.join(f'{x:.1f}' for x in summary['machine_load'])}).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| events emitted / received by the extension / missing from the stream | {events:,} / {len(delivered):,} "
        f"/ {summary['missing_from_stream']} (extra {summary['extra_on_stream']}) |",
        f"| RSS after warm-up → last idle spell (drift), highest | {summary['rss_kb_after_warmup']} → "
        f"{summary['rss_kb_last']} kB ({drift:+.1f} %), {summary['rss_kb_max']} kB |",
        f"| open files, threads (first idle spell, highest) | {summary['fds_first_max']}, "
        f"{summary['threads_first_max']} |",
        f"| CPU per idle second (median, highest; after {SETTLE_S:g} s of each spell) | "
        f"{summary['idle_cpu_ms_per_s_median'] or 0:.3f} ms, {summary['idle_cpu_ms_per_s_max'] or 0:.3f} ms |",
        f"| CPU per 1,000 events (bursts) | {summary['burst_cpu_ms_per_1000_events']:.1f} ms |",
        f"| metrics records | {len(metrics)} |",
        f"| exit | code {res.exit_code}{', SIGKILLed' if res.killed else ''} |",
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if summary["missing_from_stream"] or res.exit_code != 0:
        print(stderr_tail, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
