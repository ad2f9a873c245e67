#!/usr/bin/env python3
"""Kinesis cost of the record formats, and post-runtime time of the flush modes.

Runs the built extension under the Lambda simulator (frozen between invokes),
writing to a local kinesalite through `tests/fault_proxy.py` (no faults: it
only counts what the extension sends), and prints markdown tables:

1. For each format (json, kpl, ndjson-gzip, cwlogs, otlp-json, otlp-json+gzip: with
   KINESIS_TELEMETRY_OTLP_COMPRESSION=gzip) and N function log lines per invoke
   (1, 10, 100 of the simulator's text lines: ~100-200 B each, every 7th ~1.1 KB):
   Kinesis records, PutRecords requests, bytes, PUT payload units and on-demand
   billed KB, per 1,000 invocations (INVOKES runs, scaled).
   - Record size = data + partition key (what Kinesis counts against its limits).
   - PUT payload units (provisioned mode): each record rounded up to 25 KB chunks;
     AWS: "a 5KB record contains one PUT Payload Unit, a 45KB record contains two
     ... a 1MB record contains 40". We use 25 KB = 25,600 bytes (AWS's data-in
     pricing rounds with 1 KB = 1,024 bytes); with 25,000 the counts below differ
     only for records between 25,000 and 25,600 bytes (or their multiples).
   - On-demand billed KB: each record rounded up to 1 KB (1,024 bytes).
   The final metrics record written at SHUTDOWN is counted too (once per run).
   With --sampling-only: PUT payload units with KINESIS_TELEMETRY_SAMPLE_SUCCESS=0.1
   at 1 % failing invocations against all lines, and post-runtime with both.
2. Post-runtime time per flush mode at a steady rate (median/p90 past the first
   five invokes), requests per 1,000 invocations and delivery latency (the
   extension receiving an event -> the emulator accepting it).

Usage: .deps/venv/bin/python bench/cost.py [--extension PATH] [--invokes 100]
       [--flush adaptive,end] [--skip-modes]
Needs ./build.sh and tests/install_deps.sh first (./build.sh test does both).
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import emulators  # noqa: E402
from lambda_sim import LambdaSim  # noqa: E402
from stream_check import TimedProxy, is_own, median, received_at, unpack  # noqa: E402

PUT_UNIT = 25 * 1024
# Prices read from aws.amazon.com/cloudwatch/pricing and /kinesis/data-streams/pricing
# on 2026-12-05 (us-east-1): CloudWatch Logs Standard ingestion, first tier of the
# tiered pricing Lambda's logs get ($0.50/GB to 10 TB, then 0.25, 0.10, 0.05);
# Kinesis provisioned PUT payload units.
CWL_PER_GB = 0.50
KDS_PER_MILLION_UNITS = 0.014
KB = 1024
STEADY = dict(runtime_ms=5, idle_ms=40)  # ~60 ms between invokes


def env_for(emu, stream, proxy, **extra):
    env = {
        "KINESIS_TELEMETRY_STREAM": stream,
        "AWS_REGION": emu.region,
        "AWS_ENDPOINT_URL_KINESIS": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "RUST_LOG": "info",
    }
    env.update(extra)
    return env


def one_run(ext, emu, invokes, lines, fmt, flush, sim_kw=None, **extra):
    stream = "cost-" + uuid.uuid4().hex[:8]
    emu.create_stream(stream, 1)
    with TimedProxy(emu.endpoint) as proxy:
        # "otlp-json+gzip": otlp-json with KINESIS_TELEMETRY_OTLP_COMPRESSION=gzip
        if fmt.endswith("+gzip"):
            extra = dict(extra, KINESIS_TELEMETRY_OTLP_COMPRESSION="gzip")
        env = env_for(emu, stream, proxy, KINESIS_TELEMETRY_FORMAT=fmt.removesuffix("+gzip"),
                      KINESIS_TELEMETRY_FLUSH=flush, **extra)
        with LambdaSim(ext, env, **(sim_kw or {})) as sim:
            sim.start()
            before = sim.resources()
            for _ in range(invokes):
                r = sim.invoke(log_lines=lines, **STEADY)
                if r.timed_out:
                    raise SystemExit(f"invoke timed out:\n{sim.stderr_text()[-2000:]}")
            after = sim.resources()
            res = sim.shutdown()
            if res.exit_code != 0 or res.killed or sim.violations:
                raise SystemExit(f"unclean run {res} {sim.violations}:\n{sim.stderr_text()[-2000:]}")
        sizes = [len(a.data) + len(a.partition_key.encode()) for a in proxy.accepted_log]
        events = []
        for a in proxy.accepted_log:
            events += [i.data for i in unpack(a.data, fmt.removesuffix("+gzip"), a.partition_key)]
        requests = sum(1 for p in proxy.puts if p.records)
        arrived = proxy.arrivals(fmt.removesuffix("+gzip"))
    sent = collections.Counter(e for e in events if not is_own(e))
    # What CloudWatch Logs would ingest for the same lines: the cwlogs
    # messages (text lines, START/END/REPORT), each counted as CloudWatch
    # counts an event's size (its UTF-8 message + 26 bytes).
    cwl_bytes = sum(len(e) + 26 for e in events if not is_own(e)) if fmt == "cwlogs" else 0
    missing = collections.Counter(sim.delivered) - sent
    # (cwlogs and otlp-json carry lines as log events / log records, not the events'
    # bytes: their end-to-end tests check them)
    if missing and "KINESIS_TELEMETRY_SAMPLE_SUCCESS" not in extra and fmt not in ("cwlogs", "otlp-json", "otlp-json+gzip"):
        print(f"WARNING: {fmt}/{flush}/N={lines}: {sum(missing.values())} delivered events not sent",
              file=sys.stderr)
    recv = received_at(sim)
    lat = [arrived[e] - recv[e] for e in sim.delivered if e in arrived and e in recv]
    return {
        "events": len(sim.delivered),
        "event_bytes": sum(len(e) for e in sim.delivered),
        "records": len(sizes),
        "bytes": sum(sizes),
        "max_record": max(sizes) if sizes else 0,
        "put_units": sum(math.ceil(s / PUT_UNIT) for s in sizes),
        "kb_billed": sum(math.ceil(s / KB) for s in sizes),
        "requests": requests,
        "post": list(sim.post_runtime_ms),
        "latency": lat,
        # the extension's CPU over the invokes (all its threads)
        "cpu_s": (after.cpu_ns - before.cpu_ns) / 1e9 if before and after and after.cpu_ns is not None else 0,
        "cwl_bytes": cwl_bytes,
    }


def fmt_int(x):
    return f"{x:,.0f}"


def cost_table(ext, emu, invokes, flushes, line_counts, formats):
    scale = 1000.0 / invokes
    rows = []
    for flush in flushes:
        for n in line_counts:
            base = None
            for fmt in formats:
                t0 = time.perf_counter()
                r = one_run(ext, emu, invokes, n, fmt, flush)
                base = base or r
                rows.append((flush, n, fmt, r))
                print(f"  ran {flush:9} N={n:<3} {fmt:11} in {time.perf_counter() - t0:4.1f}s", file=sys.stderr)
    out = [f"Per 1,000 invocations (measured over {invokes}, x{scale:g}); steady rate "
           f"(runtime {STEADY['runtime_ms']} ms, {STEADY['idle_ms']} ms frozen between invokes).", "",
           "| flush | lines/invoke | format | events | Kinesis records | PutRecords requests | "
           "avg bytes/record | max record | MB sent | PUT payload units (25 KB) | on-demand billed MB (1 KB rounding) | "
           "PUT units vs json | post-runtime median ms | events per CPU-second |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(f, n, fm): r for f, n, fm, r in rows}
    for flush, n, fmt, r in rows:
        js = by.get((flush, n, "json"))
        rel = f"{r['put_units'] / js['put_units']:.1%}" if js and js["put_units"] else ""
        out.append(
            f"| {flush} | {n} | {fmt} | {fmt_int(r['events'] * scale)} | {fmt_int(r['records'] * scale)} | "
            f"{fmt_int(r['requests'] * scale)} | {fmt_int(r['bytes'] / max(1, r['records']))} | "
            f"{fmt_int(r['max_record'])} | {r['bytes'] * scale / 1e6:.2f} | {fmt_int(r['put_units'] * scale)} | "
            f"{r['kb_billed'] * scale / 1024:.2f} | {rel} | {median(r['post'][5:]):.2f} | "
            f"{fmt_int(r['events'] / r['cpu_s']) if r['cpu_s'] else ''} |")
    cwl = [(f, n, r) for f, n, fm, r in rows if fm == "cwlogs"]
    if cwl:
        out += ["", f"The same lines through CloudWatch Logs (the cwlogs runs' messages: text lines and "
                f"START/END/REPORT, + 26 bytes per event as CloudWatch counts them), at ${CWL_PER_GB:.2f} per GB "
                "ingested (Standard class, us-east-1, first tier), against the Kinesis PUT payload units "
                f"(${KDS_PER_MILLION_UNITS:.3f} per million, provisioned, us-east-1) of each format, per "
                "1,000 invocations:", "",
                "| flush | lines/invoke | CloudWatch Logs GB | CloudWatch Logs ingestion $ | "
                + " | ".join(f"{fm} PUT units $" for fm in formats) + " |",
                "|---|---:|---:|---:|" + "---:|" * len(formats)]
        for f, n, r in cwl:
            gb = r["cwl_bytes"] * scale / 1e9
            units = [by[(f, n, fm)]["put_units"] * scale * KDS_PER_MILLION_UNITS / 1e6 for fm in formats]
            out.append(f"| {f} | {n} | {gb:.5f} | {gb * CWL_PER_GB:.6f} | "
                       + " | ".join(f"{u:.7f}" for u in units) + " |")
    return "\n".join(out)


def sampling_table(ext, emu, invokes, line_counts, formats):
    """KINESIS_TELEMETRY_SAMPLE_SUCCESS=0.1 with 1 % of invocations failing
    (the simulator's seeded error_fraction) against no sampling, same seed."""
    scale = 1000.0 / invokes
    out = [f"Sampling: SAMPLE_SUCCESS=0.1, 1 % of invocations failing (seeded), default flush (adaptive); "
           f"per 1,000 invocations (measured over {invokes}, x{scale:g}); post-runtime median past the first "
           "five invokes.", "",
           "| lines/invoke | format | PUT payload units, all lines | with sampling 0.1 | share | "
           "MB sent, all / sampled | post-runtime median ms, all / sampled |",
           "|---:|---|---:|---:|---:|---:|---:|"]
    sim_kw = {"error_fraction": 0.01, "seed": 42}
    for n in line_counts:
        for fmt in formats:
            off = one_run(ext, emu, invokes, n, fmt, "adaptive", sim_kw)
            on = one_run(ext, emu, invokes, n, fmt, "adaptive", sim_kw, KINESIS_TELEMETRY_SAMPLE_SUCCESS="0.1")
            share = on["put_units"] / off["put_units"] if off["put_units"] else 0
            out.append(f"| {n} | {fmt} | {fmt_int(off['put_units'] * scale)} | {fmt_int(on['put_units'] * scale)} | "
                       f"{share:.1%} | {off['bytes'] * scale / 1e6:.2f} / {on['bytes'] * scale / 1e6:.2f} | "
                       f"{median(off['post'][5:]):.2f} / {median(on['post'][5:]):.2f} |")
            print(f"  ran sampling N={n} {fmt}", file=sys.stderr)
    return "\n".join(out)


def modes_table(ext, emu, invokes, lines):
    scale = 1000.0 / invokes
    out = [f"Post-runtime per flush mode: json, {lines} lines/invoke, {invokes} invokes at the steady rate; "
           "periodic/adaptive with FLUSH_INTERVAL_MS=1000, MAX_DELAY_MS=10000 (defaults); "
           "statistics past the first 5 invokes. Latency = extension received -> emulator accepted "
           "(what is sent at SHUTDOWN included).", "",
           "| flush | post-runtime median ms | p90 ms | mean ms | PutRecords per 1,000 invocations | "
           "latency median ms | latency max ms |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for flush in ("end", "batch", "periodic", "adaptive"):
        r = one_run(ext, emu, invokes, lines, "json", flush)
        post = r["post"][5:]
        s = sorted(post)
        p90 = s[min(len(s) - 1, int(0.9 * len(s)))]
        lat = r["latency"]
        out.append(f"| {flush} | {median(post):.1f} | {p90:.1f} | {sum(post) / len(post):.1f} | "
                   f"{fmt_int(r['requests'] * scale)} | {median(lat) * 1000:.0f} | {max(lat) * 1000:.0f} |")
        print(f"  ran mode {flush}", file=sys.stderr)
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extension", default=os.path.join(ROOT, "layer/extensions/kinesis-telemetry-extension"))
    ap.add_argument("--invokes", type=int, default=100)
    ap.add_argument("--lines", default="1,10,100")
    ap.add_argument("--formats", default="json,kpl,ndjson-gzip,cwlogs,otlp-json,otlp-json+gzip")
    ap.add_argument("--flush", default="adaptive,end", help="flush modes for the cost table")
    ap.add_argument("--skip-modes", action="store_true", help="no post-runtime table")
    ap.add_argument("--sampling-only", action="store_true",
                    help="only the sampling table (SAMPLE_SUCCESS=0.1 at 1 %% errors vs all lines)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        emu = emulators.start_kinesalite(tmp)
        try:
            if a.sampling_only:
                print(sampling_table(a.extension, emu, a.invokes, [int(x) for x in a.lines.split(",")],
                                     a.formats.split(",")))
                return 0
            print(cost_table(a.extension, emu, a.invokes, a.flush.split(","),
                             [int(x) for x in a.lines.split(",")], a.formats.split(",")))
            if not a.skip_modes:
                print()
                print(modes_table(a.extension, emu, a.invokes, 10))
        finally:
            emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
