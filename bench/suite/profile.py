"""Section `profile`: native profile of the symbol build (`perf record -e cpu-clock`) for
the 100 x 10 workload and a 100,000-event throughput run; top functions by self time."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time

from lambda_sim import LambdaSim

from .common import MIB
from .harness import Feeder, Sink, batches_of, bg_invoke, env_for, listener_port, make_events


def run(b):
    """Native profile of the symbol build: `perf record -e cpu-clock` (sampling; works where
    hardware counters do not) attached to the running extension, for the 100 x 10 workload
    and for a throughput run to the instant sink. Top functions by self time."""
    sym = b.a.symbols
    if not sym or not os.path.exists(sym):
        b.note("profile: no symbol build, skipped")
        return
    res = {}
    sink = Sink(b.tools)
    try:
        # 1. the 100 x 10 workload
        data = os.path.join(b.tmp, "perf-invokes.data")
        with LambdaSim(sym, env_for("ours", sink.endpoint)) as sim:
            sim.start()
            rec = _perf_attach(sim.pid, data)
            for _ in range(100):
                sim.invoke(10)
            _perf_stop(rec)
            sim.shutdown()
        res["invokes_100x10"] = _perf_top(data)
        # 2. throughput: 100,000 events to the instant sink
        data = os.path.join(b.tmp, "perf-throughput.data")
        sink.reset()
        env = env_for("ours", sink.endpoint, KINESIS_TELEMETRY_FLUSH="end",
                      KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES=1024 * MIB)
        body = batches_of(make_events(1000, "p"), 1000)[0]
        sim = LambdaSim(sym, env, freeze=False, timeout_ms=600_000, memory_mb=1024)
        try:
            sim.start()
            threading.Thread(target=bg_invoke, args=(sim,), daemon=True).start()
            time.sleep(0.2)
            rec = _perf_attach(sim.pid, data)
            f = Feeder(listener_port(sim))
            for _ in range(100):
                f.post(body, time.perf_counter() + 30)
            f.close()
            end = time.time() + 30
            while sink.count()["records"] < 99_500 and time.time() < end:
                time.sleep(0.01)
            _perf_stop(rec)
        finally:
            sim.close()
        res["throughput_100k"] = _perf_top(data)
    finally:
        sink.stop()
    b.R["profile"] = res


def _perf_attach(pid, data):
    p = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4999", "-p", str(pid), "-o", data],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)
    return p


def _perf_stop(p):
    p.send_signal(2)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()


def _perf_top(data, n=20):
    try:
        p = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "sym",
                            "--percent-limit", "0.5"], capture_output=True, text=True, timeout=120)
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}
    rows = []
    samples = None
    for line in p.stdout.splitlines():
        m = re.match(r"#\s*Samples:\s*(\S+)", line)
        if m:
            samples = m.group(1)
        m = re.match(r"\s*([\d.]+)%\s+\[(.)\]\s+(.*)", line)
        if m:
            rows.append({"pct": float(m.group(1)), "where": "kernel" if m.group(2) == "k" else "user",
                         "function": m.group(3).strip()[:140]})
        if len(rows) >= n:
            break
    split = {}
    try:
        q = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso"],
                           capture_output=True, text=True, timeout=120)
        for line in q.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
            if m:
                split[m.group(2)] = float(m.group(1))
    except Exception:  # noqa: BLE001
        pass
    return {"samples": samples, "top": rows, "by_dso_pct": split, "stderr": p.stderr[-300:] if not rows else ""}
