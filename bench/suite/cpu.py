"""Section `cpu`: task-clock of the whole extension process (`perf stat`) for 100 invokes
x 10 lines, frozen and not, and for a start + SHUTDOWN alone; per 1,000 events."""

from __future__ import annotations

import os

from .common import log, summ
from .harness import Sink, wrapper


def run(b):
    sink = Sink(b.tools)
    res = {}
    runs = b.n(5, 2)
    try:
        # The floor plus 3 threads that only sleep (this extension runs 4 threads at rest:
        # main, dispatcher, the listener's accepting thread and Lambda's kept-alive
        # connection's): what the threads alone cost when Lambda freezes and thaws it.
        labels = (("idle_start_shutdown", 0), ("invokes_100x10", 100), ("invokes_100x10_no_freeze", 100))
        targets = [(k, p, {}, labels) for k, p in b.bins.items()]
        targets.append(("floor_threads", b.bins["floor"], {"FLOOR_IDLE_THREADS": "3"}, labels))
        # The fair floor: it also takes every delivery and answers it (an accepting thread and
        # Lambda's kept-alive connection's, plus 1 sleeping thread for the dispatcher's place).
        targets.append(("floor_receive", b.bins["floor"], {"FLOOR_RECEIVE": "1", "FLOOR_IDLE_THREADS": "1"},
                        labels))
        # Runs alternate between the binaries (see startup.py).
        rows_of = {}
        for label, invokes in labels:
            for i in range(runs):
                for kind, path, extra_env, _ in targets:
                    log(f"cpu {kind}: {label}, run {i + 1}/{runs}")
                    outf = os.path.join(b.tmp, f"perf-{kind}-{label}-{i}.csv")
                    w = wrapper(os.path.join(b.tmp, f"perfwrap-{kind}"), path,
                                ["perf", "stat", "-x,", "-e", "task-clock,context-switches,page-faults",
                                 "-o", '"$PERF_OUT"', "--"])
                    r = b.sim_run(kind, w, sink.endpoint, invokes, 10,
                                  env_extra={"PERF_OUT": outf, **extra_env},
                                  freeze=not label.endswith("no_freeze"))
                    r.update(_perf(outf))
                    rows_of.setdefault((kind, label), []).append(r)
        for kind, path, extra_env, labels in targets:
            res[kind] = {}
            for label, invokes in labels:
                rows = rows_of[(kind, label)]
                ok = [r for r in rows if r["ok"] and r.get("task_clock_ms") is not None]
                res[kind][label] = {
                    "runs": len(rows), "failed": len(rows) - len(ok),
                    "errors": [r.get("error") for r in rows if not r["ok"]][:2],
                    "cpu_ms": summ([r["task_clock_ms"] for r in ok]),
                    "context_switches": summ([r.get("context-switches") for r in ok], 0),
                    "page_faults": summ([r.get("page-faults") for r in ok], 0),
                    "events": summ([r["events"] for r in ok], 0),
                }
            a, z = res[kind]["invokes_100x10"], res[kind]["idle_start_shutdown"]
            if a["cpu_ms"]["median"] is not None and z["cpu_ms"]["median"] is not None and a["events"]["median"]:
                ev = a["events"]["median"]
                res[kind]["per_1000_events_ms"] = round(
                    (a["cpu_ms"]["median"] - z["cpu_ms"]["median"]) / ev * 1000, 3)
                res[kind]["per_1000_events_total_ms"] = round(a["cpu_ms"]["median"] / ev * 1000, 3)
    finally:
        sink.stop()
    b.R["cpu"] = res


def _perf(path):
    out = {}
    try:
        for line in open(path):
            parts = line.strip().split(",")
            if len(parts) >= 3 and parts[0] and parts[0][0].isdigit():
                if parts[2] == "task-clock":
                    out["task_clock_ms"] = float(parts[0])
                else:
                    out[parts[2]] = float(parts[0])
    except OSError:
        pass
    return out
