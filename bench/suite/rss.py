"""Section `rss`: peak (VmHWM) and idle (VmRSS while frozen) RSS over 100 invokes with
10 and with 1,000 function log lines each."""

from __future__ import annotations

from .common import log, summ
from .harness import Sink


def run(b):
    sink = Sink(b.tools)
    res = {}
    try:
        for kind, path in b.bins.items():
            res[kind] = {}
            for lines, runs in ((10, b.n(5, 2)), (1000, b.n(5, 1))):
                log(f"rss {kind}: 100 invokes x {lines} lines, {runs} runs")
                rows = [b.sim_run(kind, path, sink.endpoint, 100, lines, read_idle=True)
                        for _ in range(runs)]
                ok = [r for r in rows if r["ok"]]
                res[kind][f"lines_{lines}"] = {
                    "runs": len(rows), "failed": len(rows) - len(ok),
                    "errors": [r.get("error") for r in rows if not r["ok"]][:2],
                    "peak_rss_mib": summ([r["peak_rss_kb"] / 1024 for r in ok]),
                    "idle_rss_mib": summ([r["idle_rss_kb"][-1] / 1024 for r in ok if r["idle_rss_kb"]
                                          and r["idle_rss_kb"][-1]]),
                    "idle_rss_first_invoke_mib": summ([r["idle_rss_kb"][0] / 1024 for r in ok
                                                       if r["idle_rss_kb"] and r["idle_rss_kb"][0]]),
                    "events_per_run": summ([r["events"] for r in ok], 0),
                    "violations": [v for r in ok for v in r["violations"]][:3],
                }
    finally:
        sink.stop()
    b.R["rss"] = res
