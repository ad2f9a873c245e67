"""Section `throughput`: listener -> dispatcher -> HTTP events/s with the extension pinned
to CPU 0, to the instant sink and to kinesalite, and the sink's and feeder's own capacity."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from lambda_sim import LambdaSim, SimError

from .common import MIB, log, pin_process, process_tree, summ
from .harness import Feeder, Sink, batches_of, bg_invoke, env_for, listener_port, make_events


def run(b):
    res = {}
    me = os.sched_getaffinity(0)
    two = len(me) >= 2 and {0, 1} <= me
    if not two:
        b.note("throughput: fewer than 2 CPUs available; the extension is not pinned apart from the load")
    sink = Sink(b.tools, {1} if two else None)
    try:
        # The sink's own capacity (sinkload pinned to CPU 0, sink on CPU 1).
        p = subprocess.run((["taskset", "-c", "0"] if two else []) +
                           [os.path.join(b.tools, "sinkload"), "--addr", f"127.0.0.1:{sink.port}",
                            "--seconds", "2", "--records", "500", "--record-bytes", "200"],
                           capture_output=True, text=True, timeout=60)
        res["sink_capacity"] = json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr[-500:]}
        sink.reset()
        if two:
            os.sched_setaffinity(0, {1})
        events = make_events(1000, "t")
        body = batches_of(events, 1000)[0]
        res["batch"] = {"events": 1000, "bytes": len(body)}
        # The feeder's own capacity: batches to the sink (answers 200 at once).
        f = Feeder(sink.port)
        t0 = time.perf_counter()
        k = 0
        while time.perf_counter() - t0 < 1.0:
            f.post(body)
            k += 1
        f.close()
        res["feeder_capacity_events_per_s"] = round(k * 1000 / (time.perf_counter() - t0))
        res["kinesalite_capacity"] = b.kinesalite_capacity()
        # Redaction on (issue 15): the same lines (no secrets: each rule's
        # cheap test answers no), and lines that each carry an e-mail address
        # and a bearer token (the regexes run and replace).
        redact = {"KINESIS_TELEMETRY_REDACT": "all",
                  "KINESIS_TELEMETRY_REDACT_PATTERNS": '["acct-[0-9]{8}"]'}
        hits = [e.replace(b'"record":"line ', b'"record":"user jane.doe@example.com Authorization: Bearer '
                          b'2YotnFZFEjr1zCsic line ', 1) for e in events]
        assert all(h != e for h, e in zip(hits, events))
        hits_body = batches_of(hits, 1000)[0]
        variants = {"instant_sink_redact": (body, redact), "instant_sink_redact_hits": (hits_body, redact)}
        # Cost per user pattern (issue 22): 1, 10 and 100 patterns on the same lines
        # (the mix of src/records/redact.rs's redaction_cost micro-benchmark).
        for n in (1, 10, 100):
            variants[f"instant_sink_redact_patterns_{n}"] = (body, {
                "KINESIS_TELEMETRY_REDACT": "all",
                "KINESIS_TELEMETRY_REDACT_PATTERNS": json.dumps(_bench_patterns(n))})
        plan = [("ours", "instant_sink", b.n(300_000, 100_000), b.n(5, 1)),
                ("before", "instant_sink", b.n(300_000, 100_000), b.n(5, 1)),
                ("ours", "kinesalite", b.n(20_000, 10_000), b.n(3, 1)),
                ("rust-sdk", "instant_sink", b.n(100_000, 20_000), b.n(3, 1)),
                ("rust-sdk", "kinesalite", b.n(20_000, 10_000), b.n(1, 1)),
                ("node", "instant_sink", b.n(100_000, 20_000), b.n(3, 1)),
                ("node", "kinesalite", b.n(20_000, 10_000), b.n(1, 1))]
        for kind, target, n, runs in plan:
            if kind not in b.bins:
                continue
            rows = []
            for _ in range(runs):
                log(f"throughput {kind} -> {target}: {n} events")
                rows.append(_throughput_once(b, kind, target, n, body, sink, two))
            res.setdefault(kind, {})[target] = _summary(n, rows)
        for kind in ("ours", "before"):
            if kind not in b.bins:
                continue
            for name, (vbody, env) in variants.items():
                rows = []
                for _ in range(b.n(5, 1)):
                    log(f"throughput {kind} -> {name}")
                    rows.append(_throughput_once(b, kind, "instant_sink", b.n(300_000, 100_000), vbody, sink,
                                                 two, env))
                res[kind][name] = _summary(b.n(300_000, 100_000), rows)
    finally:
        os.sched_setaffinity(0, me)
        sink.stop()
    res["method"] = ("extension (all threads) pinned to CPU 0; feeder, simulator and sink/kinesalite on CPU 1; "
                     "1000-event batches (~300 KB) POSTed back to back to the listener during one long invoke "
                     "(this extension with KINESIS_TELEMETRY_FLUSH=end, which sends full requests while it "
                     "waits for runtimeDone, and a 1 GiB buffer cap); time from the first POST until the sink "
                     "has every event (this extension: all but the last partial request, which `end` keeps "
                     "for runtimeDone); redaction rows: KINESIS_TELEMETRY_REDACT=all and one pattern, on the "
                     "same lines and on lines that each carry an e-mail address and a bearer token; "
                     "redact_patterns_N: REDACT=all and N user patterns (no line matches)")
    b.R["throughput"] = res


def _bench_patterns(n):
    """A quarter each: a leading literal, an inner literal, a case-blind literal,
    classes around digits (as redact.rs's bench_patterns(n, mixed=true))."""
    kinds = [lambda i: f"acct{i:02}-[0-9]{{8}}", lambda i: rf"\b[a-z]+_{i:02}=[0-9a-f]{{12}}\b",
             lambda i: rf"(?i)token{i:02}:\s*\w+", lambda i: f"[A-Z]{{3}}{i:02}[0-9]{{6}}"]
    return [{"name": f"p{i}", "pattern": kinds[i % 4](i)} for i in range(n)]


def _summary(n, rows):
    ok = [r for r in rows if r.get("events_per_s")]
    return {
        "events": n, "runs": len(rows), "failed": len(rows) - len(ok),
        "errors": [r.get("error") for r in rows if r.get("error")][:2],
        "events_per_s": summ([r["events_per_s"] for r in ok], 0),
        "cpu_utilisation": summ([r.get("cpu_util") for r in ok], 2),
        "events_per_cpu_s": summ([r.get("events_per_cpu_s") for r in ok], 0),
        "feeder_retries": sum(r.get("retries", 0) for r in rows),
    }


def _throughput_once(b, kind, target, n, body, sink, two, extra_env=None):
    if target == "kinesalite":
        emu = b.kinesalite()
        if two:
            for pid in process_tree(emu.proc.pid):
                pin_process(pid, {1})
        stream = b.stream()
        endpoint, extra = emu.endpoint, {"KINESIS_TELEMETRY_STREAM": stream, "AWS_REGION": emu.region}
    else:
        sink.reset()
        endpoint, extra = sink.endpoint, {}
    if kind in ("ours", "before"):
        # `end` keeps sending full batches while it waits for the invoke's runtimeDone (the
        # modes that pause at once send only when an invoke starts); a 1 GiB cap so that
        # the queue never reaches it (at the cap the extension stops reading and pauses).
        extra.update({"KINESIS_TELEMETRY_FLUSH": "end", "KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES": 1024 * MIB})
        extra.update(extra_env or {})
    env = env_for(kind, endpoint, **extra)
    out = {}
    sim = LambdaSim(b.bins[kind], env, freeze=False, timeout_ms=600_000, memory_mb=1024)
    try:
        sim.start()
        if two:
            pin_process(sim.pid, {0})
        # One long invoke keeps the extension thawed (sending) while we feed it.
        th = threading.Thread(target=bg_invoke, args=(sim,), daemon=True)
        th.start()
        time.sleep(0.2)
        port = listener_port(sim)
        f = Feeder(port)
        cpu0 = _cpu_ticks(sim.pid)
        t0 = time.perf_counter()
        fed = 0
        deadline = t0 + 60
        base = _delivered(b, target, sink, stream if target == "kinesalite" else None, None)
        while fed < n and time.perf_counter() < deadline:
            f.post(body, deadline)
            fed += 1000
        f.close()
        # `end` mode keeps a last partial request (< 500 records) for runtimeDone.
        want = fed - 500 if kind in ("ours", "before") else fed
        got = 0
        state = base
        last, last_change = -1, time.perf_counter()
        while time.perf_counter() < deadline:
            got, state = _delivered(b, target, sink, stream if target == "kinesalite" else None, state,
                                    counting=True)
            if got >= want:
                break
            if got != last:
                last, last_change = got, time.perf_counter()
            elif time.perf_counter() - last_change > 10:
                break  # stalled: nothing arrived for 10 s
            time.sleep(0.01 if target == "instant_sink" else 0.05)
        t1 = time.perf_counter()
        cpu1 = _cpu_ticks(sim.pid)
        out.update({"fed": fed, "delivered": got, "seconds": round(t1 - t0, 3), "retries": f.retries})
        if got >= want:
            out["events_per_s"] = round(got / (t1 - t0))
            if cpu0 is not None and cpu1 is not None:
                cpu_s = (cpu1 - cpu0) / 100.0
                out["cpu_util"] = round(cpu_s / (t1 - t0), 2)
                if cpu_s > 0:
                    out["events_per_cpu_s"] = round(got / cpu_s)
        else:
            out["error"] = f"only {got} of {fed} events arrived (stalled or past 60 s)"
    except (SimError, RuntimeError) as e:
        out["error"] = str(e)[-1500:]
    finally:
        sim.close()
    return out


def _cpu_ticks(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except (OSError, IndexError, ValueError):
        return None


def _delivered(b, target, sink, stream, state, counting=False):
    if target == "instant_sink":
        c = sink.count()["records"]
        return (c, None) if counting else None
    # kinesalite: follow the shard with GetRecords
    cl = b.kinesalite().client()
    if state is None:
        shard = cl.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
        it = cl.get_shard_iterator(StreamName=stream, ShardId=shard,
                                   ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        state = {"it": it, "n": 0, "cl": cl}
        if not counting:
            return state
    while True:
        r = state["cl"].get_records(ShardIterator=state["it"], Limit=10000)
        state["it"] = r["NextShardIterator"]
        state["n"] += len(r["Records"])
        if not r["Records"]:
            break
    return state["n"], state
