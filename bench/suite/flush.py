"""Section `flush`: post-runtime time per invoke for each KINESIS_TELEMETRY_FLUSH mode at
sparse and steady invoke rates, to kinesalite and to the instant sink; baselines alike."""

from __future__ import annotations

from .common import log, summ
from .harness import Sink


def run(b):
    res = {"ours": {}, "baselines": {}}
    sparse = dict(idle_ms=500, invokes=b.n(20, 8))
    steady = dict(idle_ms=5, invokes=b.n(100, 30))
    emu = b.kinesalite()
    for mode in ("adaptive", "end", "batch", "periodic"):
        res["ours"][mode] = {}
        for rate, spec in (("sparse", sparse), ("steady", steady)):
            extra = {"KINESIS_TELEMETRY_FLUSH": mode, "KINESIS_TELEMETRY_STREAM": b.stream(),
                     "AWS_REGION": emu.region}
            if rate == "sparse":
                extra["KINESIS_TELEMETRY_MAX_DELAY_MS"] = 200
            log(f"flush ours {mode} {rate}: {spec['invokes']} invokes, idle {spec['idle_ms']} ms, kinesalite")
            r = b.sim_run("ours", b.bins["ours"], emu.endpoint, spec["invokes"], 10,
                          idle_ms=spec["idle_ms"], runtime_ms=2, env_extra=extra, skip_first=5)
            res["ours"][mode][rate] = _post_summary(r)
    sink = Sink(b.tools)
    try:
        for mode in ("adaptive", "end", "batch", "periodic"):
            log(f"flush ours {mode} steady: instant sink")
            r = b.sim_run("ours", b.bins["ours"], sink.endpoint, steady["invokes"], 10,
                          idle_ms=steady["idle_ms"], runtime_ms=2,
                          env_extra={"KINESIS_TELEMETRY_FLUSH": mode}, skip_first=5)
            res["ours"][mode]["steady_instant_sink"] = _post_summary(r)
    finally:
        sink.stop()
    for kind in ("rust-sdk", "node"):
        if kind not in b.bins:
            continue
        res["baselines"][kind] = {}
        for rate, spec in (("sparse", sparse), ("steady", steady)):
            log(f"flush {kind} {rate}")
            r = b.sim_run(kind, b.bins[kind], emu.endpoint, spec["invokes"], 10,
                          idle_ms=spec["idle_ms"], runtime_ms=2,
                          env_extra={"KINESIS_TELEMETRY_STREAM": b.stream(), "AWS_REGION": emu.region},
                          skip_first=5)
            res["baselines"][kind][rate] = _post_summary(r)
    res["spec"] = {"sparse": sparse, "steady": steady, "lines": 10, "runtime_ms": 2,
                   "skipped_first_invokes": 5,
                   "sparse_env": "KINESIS_TELEMETRY_MAX_DELAY_MS=200"}
    b.R["flush"] = res


def _post_summary(r):
    if not r["ok"]:
        return {"ok": False, "error": r.get("error")}
    return {"ok": True, "post_runtime_ms": summ(r["post_runtime_ms"]),
            "post_runtime_all_ms": summ(r["post_runtime_all_ms"]), "events": r["events"],
            "violations": r["violations"][:3]}
