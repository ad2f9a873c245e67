#!/usr/bin/env python3
"""Repro of a delivery stall seen by the throughput bench (not part of CI).

Scenario: one long invoke (never frozen), KINESIS_TELEMETRY_FLUSH=end, a 1 GiB
buffer cap, the extension pinned to CPU 0; 300 batches of 1,000 function-log
events (~300 KB each) POSTed back to back to the telemetry listener; PutRecords
go to the instant sink (bench/tools sink). Normally all 300,000 events reach
the sink in ~2-4 s. Sometimes delivery stops for good at ~150,000: the
dispatcher waits in its select, a body reader is blocked sending into the full
events channel, the main thread waits for the Pause reply, the feeder's POST
is never answered. Seen in 1 of 3-5 runs with commit c1014c8, up to 8 of 19
with d4c6767 (under bench.py's throughput harness).

Root cause (found with gdb and counters on a stalled run): send_due() started
requests only within a FLUSH_TIMEOUT_MS window; when it ended with full
requests queued after the last POST, nothing woke the dispatcher until the
60 s metrics timer. Fixed by a zero timer while a full request is due (and a
time budget per request); test_faults.py has the deterministic regression
test. This script stays as a soak check.

    .deps/venv/bin/python bench/repro_flood_stall.py [BINARY] [ATTEMPTS]

Prints one line per attempt; on a stall, the threads' wait channels and (with
gdb, on an unstripped build) their backtraces. Needs bench/run.sh to have
built bench/tools.
"""
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import bench as B  # noqa: E402
from lambda_sim import LambdaSim  # noqa: E402


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "layer/extensions", B.NAME)
    attempts = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    two = {0, 1} <= os.sched_getaffinity(0)
    sink = B.Sink(os.path.join(HERE, "tools/target/release"), {1} if two else None)
    body = B.batches_of(B.make_events(1000, "r"), 1000)[0]
    rc = 0
    try:
        for attempt in range(attempts):
            sink.reset()
            env = B.env_for("ours", sink.endpoint, KINESIS_TELEMETRY_FLUSH="end",
                            KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES=1024 * B.MIB)
            sim = LambdaSim(binary, env, freeze=False, timeout_ms=600_000, memory_mb=1024)
            try:
                sim.start()
                if two:
                    B.pin_process(sim.pid, {0})
                    os.sched_setaffinity(0, {1})
                threading.Thread(target=lambda: _invoke(sim), daemon=True).start()
                time.sleep(0.2)
                fed = [0]

                def feed():
                    f = B.Feeder(B.listener_port(sim))
                    try:
                        while fed[0] < 300_000:
                            f.post(body, time.perf_counter() + 40)
                            fed[0] += 1000
                    except Exception as e:  # noqa: BLE001
                        print("  feeder:", e, flush=True)
                threading.Thread(target=feed, daemon=True).start()
                t0 = time.time()
                last, last_t, stalled = -1, t0, False
                while time.time() - t0 < 40:
                    c = sink.count()["records"]
                    if c >= 299_500:
                        break
                    if c != last:
                        last, last_t = c, time.time()
                    elif time.time() - last_t > 5:
                        stalled = True
                        break
                    time.sleep(0.05)
                print(f"attempt {attempt}: fed {fed[0]:,} delivered {sink.count()['records']:,} "
                      f"{'STALLED' if stalled else 'ok'} after {time.time() - t0:.1f} s", flush=True)
                if stalled:
                    rc = 1
                    for t in sorted(os.listdir(f"/proc/{sim.pid}/task"), key=int):
                        comm = open(f"/proc/{sim.pid}/task/{t}/comm").read().strip()
                        wchan = open(f"/proc/{sim.pid}/task/{t}/wchan").read()
                        print(f"  thread {t} {comm}: {wchan}")
                    try:
                        g = subprocess.run(["gdb", "-p", str(sim.pid), "-batch", "-ex", "thread apply all bt 12"],
                                           capture_output=True, text=True, timeout=60)
                        print(g.stdout[-8000:])
                    except (OSError, subprocess.TimeoutExpired):
                        pass
                    break
            finally:
                sim.close()
    finally:
        sink.stop()
    sys.exit(rc)


def _invoke(sim):
    try:
        sim.invoke(0, runtime_ms=120_000)
    except Exception:  # noqa: BLE001 - closed under it
        pass


if __name__ == "__main__":
    main()
