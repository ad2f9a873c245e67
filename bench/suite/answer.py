"""Section `answer`: how long a Telemetry API delivery waits for its 200, by
body size (1, 100, 1,000 events), with the dispatcher idle (instant sink) and
busy (another client's 1,000-event deliveries every 0.5 s, about what a
sink that takes 250 ms per 500-record PutRecords can absorb, through the
fault proxy: the dispatcher is inside a slow request most of the time, and
memory stays below the cap, where waiting is the push-back by design: the
cap is 256 MiB, since the measured 200 bodies of 1,000 events (~60 MB) come
faster than the slow sink drains them; at 64 MiB the last of them meet the
cap and wait, p99 118-382 ms). Lambda keeps one batch in flight per
subscriber, so the answer time is what telemetry waits on (AWS's emulator
even drops the next batch when it comes late).

Also runs on its own, for a before/after of two binaries:

    .deps/venv/bin/python -m suite.answer BIN [BIN...]   (from bench/, with tests/ on PYTHONPATH)
"""

from __future__ import annotations

import json
import sys
import threading
import time

from fault_proxy import FaultProxy, Faults
from lambda_sim import LambdaSim

from .common import log
from .harness import Feeder, Sink, batches_of, env_for, listener_port, make_events

SIZES = (1, 100, 1000)
SLOW_SINK_MS = 250


def _pct(xs, q):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2) if xs else None


def measure(binary, tools, posts):
    """{"idle"|"busy": {size: {"p50_ms","p99_ms","n"}}} for one binary."""
    out = {}
    sink = Sink(tools)
    try:
        for mode in ("idle", "busy"):
            delay = SLOW_SINK_MS if mode == "busy" else 0
            with FaultProxy(sink.endpoint, Faults(delay_ms=delay)) as proxy:
                env = env_for("ours", proxy.endpoint, KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES=256 << 20)
                with LambdaSim(binary, env, managed_instances=True) as sim:
                    sim.start()
                    port = listener_port(sim)
                    stop = threading.Event()
                    if mode == "busy":
                        # Another client keeps the dispatcher sending (LMI
                        # sends in the background): 1,000-event bodies.
                        bodies = batches_of(make_events(1000, "k"), 1000)

                        def keep_busy():
                            f = Feeder(port)
                            while not stop.is_set():
                                f.post(bodies[0])
                                stop.wait(0.5)
                            f.close()
                        threading.Thread(target=keep_busy, daemon=True).start()
                        time.sleep(1.0)
                    res = {}
                    for size in SIZES:
                        body = batches_of(make_events(size, f"a{size}"), size)[0]
                        f = Feeder(port)
                        times = f.timed_posts(body, posts)
                        f.close()
                        res[str(size)] = {"p50_ms": _pct(times, 0.5), "p99_ms": _pct(times, 0.99),
                                          "n": len(times)}
                    stop.set()
                    sim.shutdown()
                    out[mode] = res
    finally:
        sink.stop()
    return out


def run(b):
    posts = b.n(200, 30)
    log(f"answer times: {posts} posts per body size, idle and busy")
    b.R["answer"] = {"posts": posts, "slow_sink_ms": SLOW_SINK_MS}
    for kind in ("ours", "before"):
        if kind in b.bins:
            b.R["answer"][kind] = measure(b.bins[kind], b.tools, posts)


if __name__ == "__main__":
    import os
    tools = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "tools", "target", "release")
    print(json.dumps({p: measure(p, tools, 100) for p in sys.argv[1:]}, indent=1))
