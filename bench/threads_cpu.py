"""Threads and CPU of one extension binary, per thread (issue 23, part 1: the
listener's options were weighed with it). For each run: threads at rest after
100 invokes x 10 lines with freezes, and that run's CPU (perf task-clock of the
process, and per thread from /proc/PID/task/*/schedstat at rest); then CPU per
1,000-event delivery (Lambda Managed Instances mode, 100 bodies POSTed straight to
the listener, per thread, whole process) and the answer time's median. Instant
sink (bench/tools). The binary's file must be named kinesis-telemetry-extension.

    .deps/venv/bin/python bench/threads_cpu.py BIN [runs]
    FROZEN_ONLY=1 MEASURE_ENV='{"FLOOR_IDLE_THREADS": "3"}' ... bench/threads_cpu.py FLOOR_BIN
"""
import collections
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(HERE), "tests"), HERE]
from lambda_sim import LambdaSim  # noqa: E402
from suite.harness import Feeder, Sink, batches_of, env_for, listener_port, make_events, wrapper  # noqa: E402

TOOLS = os.environ.get("BENCH_TOOLS", os.path.join(HERE, "tools", "target", "release"))


def tasks(pid):
    """(threads, {thread name: ms on CPU}) of `pid`'s live threads."""
    out = collections.defaultdict(float)
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{t}/comm").read().strip()
            ns = int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except OSError:
            continue
        out[comm] += ns / 1e6
        n += 1
    return n, dict(out)


def frozen(binary, sink, i):
    """100 invokes x 10 lines with freezes: (threads at rest, per-thread ms, task-clock ms)."""
    tmp = tempfile.mkdtemp(prefix="threads-cpu-")
    perf_out = os.path.join(tmp, "perf.csv")
    w = wrapper(os.path.join(tmp, "wrap"), binary,
                ["perf", "stat", "-x,", "-e", "task-clock", "-o", perf_out, "--"])
    env = env_for("ours", sink.endpoint, **json.loads(os.environ.get("MEASURE_ENV", "{}")))
    with LambdaSim(w, env, freeze=True) as sim:
        sim.start()
        for _ in range(100):
            assert not sim.invoke(10).timed_out
        pid = sim.pid
        # the extension under perf: the child of the wrapper
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
        epid = int(kids[0]) if kids else pid
        n, per = tasks(epid)
        sim.shutdown()
    tc = None
    for line in open(perf_out):
        p = line.strip().split(",")
        if len(p) >= 3 and p[2] == "task-clock":
            tc = float(p[0])
    return n, per, tc


def deliveries(binary, sink, posts=100):
    """CPU per 1,000-event delivery (whole process, per thread), median answer time."""
    env = env_for("ours", sink.endpoint, KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES=64 << 20)
    body = batches_of(make_events(1000, "a"), 1000)[0]
    with LambdaSim(binary, env, managed_instances=True) as sim:
        sim.start()
        port = listener_port(sim)
        f = Feeder(port)
        for _ in range(10):
            f.post(body)
        time.sleep(0.5)
        _, b = tasks(sim.pid)
        times = f.timed_posts(body, posts)
        time.sleep(0.5)
        n, a = tasks(sim.pid)
        f.close()
        sim.shutdown()
    d = {k: round((a.get(k, 0) - b.get(k, 0)) / posts, 3) for k in a}
    times.sort()
    return sum(d.values()), d, times[len(times) // 2], len(body)


def main():
    binary = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    sink = Sink(TOOLS)
    try:
        res = {"bin": binary, "bytes": os.path.getsize(binary), "frozen": [], "per_delivery": []}
        for i in range(runs):
            n, per, tc = frozen(binary, sink, i)
            res["frozen"].append({"threads_at_rest": n, "task_clock_ms": tc,
                                  "per_thread_ms": {k: round(v, 2) for k, v in per.items()}})
            if os.environ.get("FROZEN_ONLY"):
                continue
            tot, d, p50, blen = deliveries(binary, sink)
            res["per_delivery"].append({"cpu_ms_per_1000_event_delivery": round(tot, 3),
                                        "per_thread": d, "answer_p50_ms": round(p50, 2), "body_bytes": blen})
        res["median_task_clock_ms"] = statistics.median(r["task_clock_ms"] for r in res["frozen"])
        if res["per_delivery"]:
            res["median_cpu_per_delivery_ms"] = statistics.median(r["cpu_ms_per_1000_event_delivery"] for r in res["per_delivery"])
        print(json.dumps(res, indent=1))
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
