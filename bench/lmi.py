"""Lambda Managed Instances figures (issue 13): one environment under steady
traffic in the simulator's LMI mode, into kinesalite. For each rate and
format: event -> stream latency (the event's `time`, stamped when the
simulator emitted it, to the record's ApproximateArrivalTimestamp), CPU per
1,000 events (utime + stime of the extension over the whole run), peak RSS.

    .deps/venv/bin/python bench/lmi.py [--seconds 5] [--out bench/lmi-results.md]

Not part of CI. kinesalite's own capacity (about 10.6k records/s from one
client) bounds `json` at high rates; see docs/managed-instances.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import emulators  # noqa: E402
from lambda_sim import LambdaSim  # noqa: E402
from stream_check import unpack  # noqa: E402

BIN = os.environ.get("EXTENSION_BIN") or str(ROOT / "layer/extensions/kinesis-telemetry-extension")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / TICKS


def parse_time(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def read_with_arrival(emu, name: str, expect: int, timeout: float = 30) -> list[tuple[bytes, str, float]]:
    """(data, partition key, arrival epoch seconds) of every record of `name`."""
    k = emu.kinesis
    out = []
    deadline = dt.datetime.now().timestamp() + timeout
    shards = [s["ShardId"] for s in k.describe_stream(StreamName=name)["StreamDescription"]["Shards"]]
    its = {s: k.get_shard_iterator(StreamName=name, ShardId=s, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
           for s in shards}
    while True:
        for s, it in list(its.items()):
            while it:
                page = k.get_records(ShardIterator=it, Limit=10000)
                for r in page["Records"]:
                    out.append((bytes(r["Data"]), r["PartitionKey"], r["ApproximateArrivalTimestamp"].timestamp()))
                it = page.get("NextShardIterator")
                if not page["Records"]:
                    break
            its[s] = it
        if len(out) >= expect or dt.datetime.now().timestamp() > deadline:
            return out


def run(emu, fmt: str, rate: int, seconds: float) -> dict:
    name = "lmi-" + uuid.uuid4().hex[:8]
    emu.create_stream(name, 2)
    env = {
        "KINESIS_TELEMETRY_STREAM": name, "AWS_REGION": emu.region,
        "AWS_ENDPOINT_URL_KINESIS": emu.endpoint, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret", "KINESIS_TELEMETRY_FORMAT": fmt,
    }
    with LambdaSim(BIN, env, managed_instances=True) as sim:
        sim.start()
        pid = sim._proc.pid
        traffic = sim.run_traffic(rate, seconds, concurrency=16, log_lines=20)
        cpu = cpu_ms(pid)
        rss_kb = sim._read_vmhwm_kb()
        res = sim.shutdown()
        delivered = len(sim.delivered)
    records = read_with_arrival(emu, name, expect=1)
    latencies = []
    events = 0
    for data, key, arrival in records:
        for inner in unpack(data, fmt, key, allow_plain=True):
            events += 1
            head = inner.data[:60]
            if b'"time":"' not in head:
                continue
            t = inner.data.split(b'"time":"', 1)[1].split(b'"', 1)[0].decode()
            latencies.append((arrival - parse_time(t)) * 1000.0)
    latencies.sort()
    return {
        "format": fmt, "rate": rate, "sustained": round(traffic.rate), "events": traffic.events,
        "delivered": delivered, "on_stream": events, "exit": res.exit_code,
        "lat_p50": statistics.median(latencies), "lat_p99": latencies[int(len(latencies) * 0.99) - 1],
        "cpu_per_1000": cpu / max(1, traffic.events) * 1000.0, "rss_mib": (rss_kb or 0) / 1024.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", default=str(ROOT / "bench/lmi-results.md"))
    args = ap.parse_args()
    emu = emulators.start_kinesalite()
    rows = []
    try:
        for fmt in ("kpl", "json"):
            for rate in (500, 5000):
                r = run(emu, fmt, rate, args.seconds)
                rows.append(r)
                print(r, flush=True)
    finally:
        emu.stop()
    lines = [
        f"LMI, one environment, 16 invocations at once, {args.seconds:g} s per row, kinesalite, 2 shards",
        "(`bench/lmi.py`; latency: event `time` -> ApproximateArrivalTimestamp, ms resolution).",
        "",
        "| format | events/s (sustained) | on stream / emitted to the extension | latency median | p99 | CPU per 1,000 events | peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['format']} | {r['rate']:,} ({r['sustained']:,}) | {r['on_stream']:,} / {r['delivered']:,} "
            f"| {r['lat_p50']:.0f} ms | {r['lat_p99']:.0f} ms | {r['cpu_per_1000']:.1f} ms "
            f"| {r['rss_mib']:.1f} MiB |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
