"""Constants, budgets, statistics and /proc helpers shared by every section."""

from __future__ import annotations

import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIB = 1024 * 1024
NAME = "kinesis-telemetry-extension"
LABEL = {
    "ours": "this extension",
    "before": "this extension, the earlier build given with --before",
    "floor": "floor (register + next only)",
    "rust-sdk": "Rust lambda-extension + aws-sdk-kinesis",
    "node": "Node.js + @aws-sdk/client-kinesis",
}

BUDGETS = {
    "next_vs_floor": 1.5,
    "next_ms": 2.0,
    "size_x86_64_mib": 2.0,
    "size_arm64_mib": 1.8,
    "peak_rss_mib": 4.0,
    "cpu_ms": 25.0,
    "events_per_s": 200_000,
    "post_runtime_ms": 1.0,
    "drain_ms": 300.0,
}


# --------------------------------------------------------------------- stats
def pct(xs, q):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summ(xs, nd=3):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0, "median": None, "p90": None}
    return {"n": len(xs), "median": round(pct(xs, 0.5), nd), "p90": round(pct(xs, 0.9), nd),
            "min": round(min(xs), nd), "max": round(max(xs), nd)}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg():
    try:
        return open("/proc/loadavg").read().split()[:3]
    except OSError:
        return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def pin_process(pid, cpus):
    """Pins every thread of `pid` (threads started later inherit it)."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass
    except OSError:
        pass


def process_tree(pid):
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for c in f.read().split():
                    out.extend(process_tree(int(c)))
    except OSError:
        pass
    return out
