#!/usr/bin/env python3
"""Issue 6 benchmark suite: the extension against its baselines, in one run.

Run through bench/run.sh (it builds the baselines and tools first, then calls
this with their paths). Every figure is a median and p90 over repeated runs on
this machine, side by side with the baselines and the budgets; the output is
bench/results.json and bench/results.md (also printed).

Sections (each can be skipped with --skip NAME, see --help):

startup   exec -> register / subscribe / first event/next, warm and cold page
          cache, measured by bench/tools `startup` (a minimal Extensions API
          server in Rust; the same for every binary).
size      stripped binary sizes, x86_64 and arm64.
rss       peak (VmHWM) and idle (VmRSS while frozen) RSS over 100 invokes with
          10 and with 1,000 function log lines each (tests/lambda_sim.py).
cpu       task-clock of the extension process (all threads, whole life, via
          `perf stat -e task-clock`) for 100 invokes x 10 lines and for a
          start + SHUTDOWN with no invoke; per 1,000 events = the difference.
callgrind instruction counts (valgrind --tool=callgrind) for the same workload,
          and the top functions of the extension (symbol build).
profile   native profile of the symbol build (`perf record -e cpu-clock`) for
          the same workload and a 100,000-event throughput run.
flush     post-runtime time per invoke for each KINESIS_TELEMETRY_FLUSH mode,
          sparse and steady invoke rates, to kinesalite (and steady to the
          instant sink).
drain     time to drain 10,000 buffered events at SHUTDOWN, json and kpl, to
          kinesalite and to the instant sink.
throughput listener -> dispatcher -> HTTP events/s with the extension pinned
          to CPU 0, to the instant sink and to kinesalite; the sink's and the
          feeder's own capacity.
timeline  one cold start under strace: exec -> register -> subscribe -> next.

Each section is one module of bench/suite/ whose `run(b)` (b: the run's
suite.context.Bench) fills one key of the results; this file is only the
command line and the loop that runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

from suite import answer, callgrind, cpu, drain, flush, machine, profile, rss, size, startup, throughput, timeline
from suite.common import loadavg, log
from suite.context import Bench

HERE = os.path.dirname(os.path.abspath(__file__))

# The sections in the order a full run takes them (--only/--skip pick from these).
SECTIONS = {
    "startup": startup,
    "size": size,
    "timeline": timeline,
    "rss": rss,
    "cpu": cpu,
    "callgrind": callgrind,
    "profile": profile,
    "flush": flush,
    "drain": drain,
    "answer": answer,
    "throughput": throughput,
}


def run(b, sections):
    """The machine first, then each section; a section that fails is recorded and the rest still run."""
    machine.run(b)
    for s in sections:
        t0 = time.time()
        try:
            SECTIONS[s].run(b)
        except Exception as e:  # noqa: BLE001 - keep the other sections
            b.R.setdefault("section_errors", {})[s] = traceback.format_exc()[-3000:]
            log(f"section {s} failed: {e}")
        b.R.setdefault("section_seconds", {})[s] = round(time.time() - t0, 1)
        log(f"section {s}: {b.R['section_seconds'][s]} s")
    b.R["machine"]["loadavg_end"] = loadavg()
    if b.a.bloat and os.path.exists(b.a.bloat):
        b.R["bloat"] = open(b.a.bloat).read()
    b.close()
    return b.R


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--ours-arm64", default="")
    ap.add_argument("--symbols", default="", help="unstripped build of ours (callgrind profile)")
    ap.add_argument("--before", default="",
                    help="an earlier build of this extension, measured as ours in the same run (before/after)")
    ap.add_argument("--floor", required=True)
    ap.add_argument("--floor-arm64", default="")
    ap.add_argument("--rust-sdk", default="")
    ap.add_argument("--node", default="")
    ap.add_argument("--tools", required=True)
    ap.add_argument("--bloat", default="")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--md", default=os.path.join(HERE, "results.md"))
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke test, not for figures)")
    ap.add_argument("--nice", default="-10", help="nice level of the start-up harness ('' for none)")
    ap.add_argument("--perf-instructions", default="unknown")
    ap.add_argument("--build-info", default="")
    all_sections = list(SECTIONS)
    ap.add_argument("--only", default="", help="comma-separated sections")
    ap.add_argument("--skip", default="", help="comma-separated sections")
    a = ap.parse_args()
    a.nice = ["nice", "-n", a.nice] if a.nice else []
    sections = [s for s in (a.only.split(",") if a.only else all_sections) if s and s not in a.skip.split(",")]
    R = run(Bench(a), sections)
    if a.build_info and os.path.exists(a.build_info):
        R["build"] = json.load(open(a.build_info))
    # Merge into an existing results file when only some sections ran.
    if a.only and os.path.exists(a.out):
        try:
            old = json.load(open(a.out))
            for k, v in R.items():
                old[k] = v
            R = old
        except ValueError:
            pass
    with open(a.out, "w") as f:
        json.dump(R, f, indent=2)
    import report  # noqa: E402 - bench/report.py
    md = report.render(R)
    with open(a.md, "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
