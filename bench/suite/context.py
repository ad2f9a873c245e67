"""One bench run's state: the binaries (ours as a snapshot), the temp dir, the results,
kinesalite, and the simulator run and kinesalite capacity that several sections share."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid

import emulators
from lambda_sim import LambdaSim, SimError

from .common import BUDGETS, NAME, log, proc_status
from .harness import env_for


class Bench:
    """What the sections share: `a` (the command line), `bins` (kind -> binary), `tools`,
    `tmp`, `R` (the results, one key per section) and `quick`."""

    def __init__(self, a):
        self.a = a
        self.bins = {"ours": a.ours, "floor": a.floor}
        if a.before and not os.path.exists(a.before):
            raise SystemExit(f"bench: --before {a.before}: no such file")
        if a.before:
            self.bins = {"ours": a.ours, "before": a.before, "floor": a.floor}
        if a.rust_sdk and os.path.exists(a.rust_sdk):
            self.bins["rust-sdk"] = a.rust_sdk
        if a.node and os.path.exists(a.node):
            self.bins["node"] = a.node
        self.tools = a.tools
        self.tmp = tempfile.mkdtemp(prefix="bench-")
        # Measure a snapshot: others may rebuild layer/ while the bench runs.
        for attr in ("ours", "ours_arm64", "before"):
            src = getattr(a, attr)
            if src and os.path.exists(src):
                dst = os.path.join(self.tmp, "snapshot-" + attr, NAME)
                os.makedirs(os.path.dirname(dst))
                shutil.copy2(src, dst)
                setattr(a, attr + "_source", src)
                setattr(a, attr, dst)
        self.bins["ours"] = a.ours
        if "before" in self.bins:
            self.bins["before"] = a.before
        self.R = {"machine": {}, "budgets": BUDGETS, "binaries": {}, "notes": []}
        self._kinesalite = None
        self.quick = a.quick

    def n(self, full, quick):
        return quick if self.quick else full

    def kinesalite(self):
        if self._kinesalite is None:
            log("starting kinesalite")
            self._kinesalite = emulators.start_kinesalite(self.tmp)
        return self._kinesalite

    def stream(self):
        name = "bench-" + uuid.uuid4().hex[:10]
        self.kinesalite().create_stream(name, 1)
        return name

    def note(self, s):
        self.R["notes"].append(s)
        log("note: " + s)

    def sim_run(self, kind, path, sink_endpoint, invokes, lines, *, idle_ms=0, runtime_ms=0, env_extra=None,
                freeze=True, read_idle=False, skip_first=0, **simkw):
        """`invokes` invokes of `lines` log lines each under the Lambda simulator, then SHUTDOWN:
        RSS, post-runtime times, events, exit (the rss, cpu, callgrind and flush sections)."""
        env = env_for(kind, sink_endpoint, **(env_extra or {}))
        stream = (env_extra or {}).get("KINESIS_TELEMETRY_STREAM")
        out = {"ok": False}
        with LambdaSim(path, env, freeze=freeze, **simkw) as sim:
            try:
                sim.start()
                idle = []
                for _ in range(invokes):
                    r = sim.invoke(lines, idle_ms=idle_ms, runtime_ms=runtime_ms)
                    if r.timed_out:
                        raise SimError("invoke timed out")
                    if read_idle:
                        idle.append(proc_status(sim.pid, "VmRSS"))
                pid = sim.pid
                hwm_before_shutdown = proc_status(pid, "VmHWM")
                res = sim.shutdown()
                out.update({
                    "ok": True,
                    "peak_rss_kb": max(sim.peak_rss_kb) if sim.peak_rss_kb else hwm_before_shutdown,
                    "idle_rss_kb": idle,
                    "post_runtime_ms": sim.post_runtime_ms[skip_first:],
                    "post_runtime_all_ms": list(sim.post_runtime_ms),
                    "events": len(sim.delivered),
                    "emitted": len(sim.emitted),
                    "shutdown_ms": res.shutdown_ms,
                    "exit_code": res.exit_code,
                    "killed": res.killed,
                    "violations": list(sim.violations)[:5],
                    "init_ms": sim.init_ms,
                })
            except SimError as e:
                out["error"] = str(e)[-1500:]
            out["stream"] = stream
        return out

    def kinesalite_capacity(self):
        """What kinesalite itself sustains (bench/tools sinkload: PutRecords of 500 records of
        ~300 bytes, back to back) from one client and from four concurrent ones, cached for the
        run. The larger figure bounds what any sender (concurrent or not) can get through."""
        if "kinesalite_capacity" not in self.R:
            emu = self.kinesalite()
            port = emu.endpoint.rsplit(":", 1)[1]
            out = {}
            for conns in (1, 4):
                p = subprocess.run([os.path.join(self.tools, "sinkload"), "--addr", f"127.0.0.1:{port}",
                                    "--seconds", "3", "--stream", self.stream(), "--record-bytes", "220",
                                    "--conns", str(conns)],
                                   capture_output=True, text=True, timeout=120)
                if p.returncode != 0:
                    out = {"error": p.stderr[-500:]}
                    break
                r = json.loads(p.stdout)
                if conns == 1:
                    out.update(r)
                else:
                    out[f"records_per_s_{conns}_conns"] = r["records_per_s"]
            if "error" not in out:
                out["records_per_s_best"] = max(out["records_per_s"], out.get("records_per_s_4_conns", 0))
            self.R["kinesalite_capacity"] = out
            log(f"kinesalite capacity: {out.get('records_per_s')} records/s (1 client), "
                f"{out.get('records_per_s_4_conns')} (4 clients)")
        return self.R["kinesalite_capacity"]

    def close(self):
        """Stops kinesalite (if a section started it) and removes the temp dir."""
        if self._kinesalite is not None:
            self._kinesalite.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
