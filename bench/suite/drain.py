"""Section `drain`: time to send 10,000 buffered events at SHUTDOWN, json and kpl, to
kinesalite and to the instant sink."""

from __future__ import annotations

import time

from lambda_sim import LambdaSim, SimError

from .common import MIB, log, summ
from .harness import Feeder, Sink, batches_of, env_for, listener_port, make_events


def run(b):
    n_events = 10_000
    runs = b.n(5, 2)
    events = make_events(n_events, "d")
    bodies = batches_of(events, 1000)
    res = {"events": n_events, "event_bytes": sum(len(e) for e in events)}
    res["kinesalite_capacity"] = b.kinesalite_capacity()
    sink = Sink(b.tools)
    try:
        for target in ("kinesalite", "instant_sink"):
            res[target] = {}
            for fmt in ("json", "kpl"):
                rows = []
                log(f"drain {fmt} -> {target}: {runs} runs")
                for _ in range(runs):
                    if target == "kinesalite":
                        emu = b.kinesalite()
                        ep, extra = emu.endpoint, {"KINESIS_TELEMETRY_STREAM": b.stream(),
                                                   "AWS_REGION": emu.region}
                    else:
                        ep, extra = sink.endpoint, {}
                        sink.reset()
                    extra.update({"KINESIS_TELEMETRY_FLUSH": "batch",
                                  "KINESIS_TELEMETRY_BATCH_MAX_AGE_MS": 900000,
                                  "KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES": 64 * MIB,
                                  "KINESIS_TELEMETRY_FORMAT": fmt})
                    rows.append(_drain_once(b, ep, extra, bodies, sink if target == "instant_sink" else None))
                ok = [r for r in rows if r["ok"]]
                res[target][fmt] = {
                    "runs": len(rows), "failed": len(rows) - len(ok),
                    "errors": [r.get("error") for r in rows if not r["ok"]][:2],
                    "shutdown_ms": summ([r["shutdown_ms"] for r in ok]),
                    "records_at_sink": summ([r.get("records") for r in ok], 0),
                    "lost_logged": any(r.get("lost") for r in ok),
                }
    finally:
        sink.stop()
    b.R["drain"] = res


def _drain_once(b, endpoint, extra, bodies, sink):
    env = env_for("ours", endpoint, **extra)
    out = {"ok": False}
    with LambdaSim(b.bins["ours"], env, freeze=False) as sim:
        try:
            sim.start()
            time.sleep(0.05)
            f = Feeder(listener_port(sim))
            for body in bodies:
                f.post(body)
            f.close()
            time.sleep(0.3)  # let the dispatcher take the last batches off the channel
            res = sim.shutdown()
            txt = sim.stderr_text()
            out.update({"ok": res.exit_code == 0 and not res.killed, "shutdown_ms": res.shutdown_ms,
                        "killed": res.killed, "lost": "could not be delivered" in txt})
            if not out["ok"]:
                out["error"] = f"exit {res.exit_code} killed {res.killed}: {txt[-800:]}"
            if sink is not None:
                out["records"] = sink.count()["records"]
        except (SimError, RuntimeError) as e:
            out["error"] = str(e)[-1500:]
    return out
