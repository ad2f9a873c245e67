"""Start-up A/B of several extension binaries (issue 25's "cold start before and
after"): exec -> register / subscribe / first event/next through the bench/tools
`startup` harness, warm page cache, the environment of the bench's `startup`
section. Interleaved: each round runs every target in turn, --runs runs each
(after 2 warm-up runs), so a slow spell of a shared machine falls on all of them.
Prints the medians and p90 per target, and the machine's load average.

    .deps/venv/bin/python bench/startup_ab.py [--rounds 10] [--runs 10] \\
        [--set NAME K=V]... NAME=BINARY...

--set adds a variable for one target (a target may name a binary another
target names too: `head=BIN head-role=BIN --set head-role KINESIS_TELEMETRY_ROLE_ARN=...`).
The harness is bench/tools/target/release/startup (`cargo build --release` in
bench/tools, or any bench run, builds it)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from suite.common import loadavg, summ  # noqa: E402
from suite.startup import BASE_ENV  # noqa: E402

HARNESS = os.path.join(HERE, "tools", "target", "release", "startup")
PHASES = ("exec", "register", "subscribe", "next")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=10, help="runs per target per round")
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("NAME", "K=V"))
    ap.add_argument("targets", nargs="+", metavar="NAME=BINARY")
    a = ap.parse_args()
    if not os.access(HARNESS, os.X_OK):
        sys.exit(f"{HARNESS} not found: run `cargo build --release` in bench/tools")
    targets = {}
    for t in a.targets:
        name, sep, path = t.partition("=")
        if not sep or not os.access(path, os.X_OK):
            sys.exit(f"{t!r}: expected NAME=BINARY with an executable BINARY")
        targets[name] = (path, dict(BASE_ENV))
    for name, kv in a.set:
        k, sep, v = kv.partition("=")
        if name not in targets or not sep:
            sys.exit(f"--set {name} {kv}: expected a target's NAME and K=V")
        targets[name][1][k] = v
    rows = {name: [] for name in targets}
    load = [loadavg()]
    for rnd in range(a.rounds):
        for name, (path, env) in targets.items():
            argv = [HARNESS, "--runs", str(a.runs), "--warmup", "2"]
            for k, v in env.items():
                argv += ["--env", f"{k}={v}"]
            p = subprocess.run(argv + ["--", path], capture_output=True, text=True, timeout=600)
            got = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
            bad = [r["error"] for r in got if not r["ok"]]
            if p.returncode != 0 or bad or not got:
                sys.exit(f"{name}: harness exit {p.returncode}, errors {bad[:3]}: {p.stderr[-1000:]}")
            rows[name].extend(got)
        print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)
    load.append(loadavg())
    print(f"warm page cache, {a.rounds} rounds x {a.runs} runs; load average {load[0]} -> {load[1]}")
    print("| target | bytes | " + " | ".join(f"{p} ms median (p90)" for p in PHASES) + " |")
    print("|---|---|" + "---|" * len(PHASES))
    for name, (path, _) in targets.items():
        cells = []
        for ph in PHASES:
            s = summ([r[f"{ph}_ms"] for r in rows[name]])
            cells.append("-" if s["n"] == 0 else f"{s['median']:.3f} ({s['p90']:.3f})")
        print(f"| {name} | {os.path.getsize(path):,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
