"""The local end-to-end demo behind `./build.sh demo`.

Starts kinesalite on a free port, creates a stream, runs the built extension
under the Lambda simulator for a number of invokes with function logs (frozen
between invokes, then SHUTDOWN), reads the stream back and prints a few
records and a summary.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import emulators  # noqa: E402
from lambda_sim import LambdaSim  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--extension", required=True)
    ap.add_argument("--invokes", type=int, default=20)
    ap.add_argument("--lines", type=int, default=10, help="function log lines per invoke")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--log-format", choices=["text", "json"], default="text")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="extra variables for the extension, e.g. KINESIS_TELEMETRY_FLUSH=batch")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        emu = emulators.start_kinesalite(tmp)
        try:
            stream = "demo-telemetry"
            emu.create_stream(stream, args.shards)
            env = {
                "KINESIS_TELEMETRY_STREAM": stream,
                "AWS_REGION": emu.region,
                "AWS_ENDPOINT_URL_KINESIS": emu.endpoint,
                "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                "AWS_SECRET_ACCESS_KEY": "demo-secret",
            }
            env.update(kv.split("=", 1) for kv in args.env)
            print(f"kinesalite at {emu.endpoint}, stream {stream!r} ({args.shards} shards)")
            with LambdaSim(args.extension, env, log_format=args.log_format) as sim:
                sim.start()
                for _ in range(args.invokes):
                    sim.invoke(log_lines=args.lines)
                res = sim.shutdown()
                print("\n-- extension log --")
                print(sim.stderr_text().rstrip())
            records = emu.read_all(stream, expect=len(sim.delivered), timeout=15)
        finally:
            emu.stop()

    on_stream = collections.Counter(r["data"] for r in records)
    delivered = collections.Counter(sim.delivered)
    missing = sum((delivered - on_stream).values())
    dupes = sum(n - 1 for n in on_stream.values() if n > 1)
    types = collections.Counter(json.loads(r["data"]).get("type", "?") for r in records)

    print("\n-- a few records read back from the stream --")
    for r in records[:2] + [r for r in records if b'"type":"function"' in r["data"]][:2] + records[-2:]:
        data = r["data"].decode("utf-8", "replace")
        print(f"[{r['shard']} key={r['partition_key'][:12]}…] {data[:160]}{'…' if len(data) > 160 else ''}")

    post = sim.post_runtime_ms
    size = os.path.getsize(args.extension)
    print("\n-- summary --")
    print(f"binary size              {size} bytes ({size / 1048576:.2f} MiB)")
    print(f"exec -> register         {sim.register_ms:.1f} ms")
    print(f"exec -> first event/next {sim.init_ms:.1f} ms")
    print(f"post-runtime per invoke  median {statistics.median(post):.1f} ms, "
          f"p90 {pct(post, 90):.1f} ms, max {max(post):.1f} ms ({len(post)} invokes)")
    print(f"peak RSS                 {max(sim.peak_rss_kb or [0]) / 1024:.1f} MiB")
    print(f"shutdown                 {res.shutdown_ms:.0f} ms, exit code {res.exit_code}"
          f"{' (KILLED at deadline)' if res.killed else ''}")
    print(f"events emitted by Lambda {len(sim.emitted)} "
          f"(delivered to the extension {len(sim.delivered)}, after it exited {len(sim.emitted) - len(sim.delivered)})")
    print(f"records on the stream    {len(records)}: " + ", ".join(f"{t} {n}" for t, n in types.most_common()))
    print(f"missing {missing}, duplicates {dupes}, function lines {len(sim.function_line_ids)}")
    ok = missing == 0 and dupes == 0 and res.exit_code == 0 and not res.killed and not sim.violations
    print("RESULT: " + ("every delivered event is on the stream exactly once" if ok else
                        f"PROBLEM (violations: {sim.violations})"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
