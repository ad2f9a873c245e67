#!/usr/bin/env python3
"""Issue 6 benchmark suite: the extension against its baselines, in one run.

Run through bench/run.sh (it builds the baselines and tools first, then calls
this with their paths). Every figure is a median and p90 over repeated runs on
this machine, side by side with the baselines and the budgets; the output is
bench/results.json and bench/results.md (also printed).

Sections (each can be skipped with --skip NAME, see --help):

startup   exec -> register / subscribe / first event/next, warm and cold page
          cache, measured by bench/tools `startup` (a minimal Extensions API
          server in Rust; the same for every binary).
size      stripped binary sizes, x86_64 and arm64.
rss       peak (VmHWM) and idle (VmRSS while frozen) RSS over 100 invokes with
          10 and with 1,000 function log lines each (tests/lambda_sim.py).
cpu       task-clock of the extension process (all threads, whole life, via
          `perf stat -e task-clock`) for 100 invokes x 10 lines and for a
          start + SHUTDOWN with no invoke; per 1,000 events = the difference.
callgrind instruction counts (valgrind --tool=callgrind) for the same workload,
          and the top functions of the extension (symbol build).
flush     post-runtime time per invoke for each KINESIS_TELEMETRY_FLUSH mode,
          sparse and steady invoke rates, to kinesalite (and steady to the
          instant sink).
drain     time to drain 10,000 buffered events at SHUTDOWN, json and kpl, to
          kinesalite and to the instant sink.
throughput listener -> dispatcher -> HTTP events/s with the extension pinned
          to CPU 0, to the instant sink and to kinesalite; the sink's and the
          feeder's own capacity.
timeline  one cold start under strace: exec -> register -> subscribe -> next.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import emulators  # noqa: E402
from lambda_sim import _TEXT_TEMPLATES, LambdaSim, SimError  # noqa: E402

MIB = 1024 * 1024
NAME = "kinesis-telemetry-extension"
ORDER = ("ours", "floor", "rust-sdk", "node")
LABEL = {
    "ours": "this extension",
    "floor": "floor (register + next only)",
    "rust-sdk": "Rust lambda-extension + aws-sdk-kinesis",
    "node": "Node.js + @aws-sdk/client-kinesis",
}
# Which measurements apply to which binary (the floor sends nothing).
FORWARDS = ("ours", "rust-sdk", "node")

BUDGETS = {
    "next_vs_floor": 1.5,
    "next_ms": 2.0,
    "size_x86_64_mib": 2.0,
    "size_arm64_mib": 1.8,
    "peak_rss_mib": 4.0,
    "cpu_ms": 25.0,
    "events_per_s": 200_000,
    "post_runtime_ms": 1.0,
    "drain_ms": 300.0,
}


# --------------------------------------------------------------------- stats
def pct(xs, q):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summ(xs, nd=3):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0, "median": None, "p90": None}
    return {"n": len(xs), "median": round(pct(xs, 0.5), nd), "p90": round(pct(xs, 0.9), nd),
            "min": round(min(xs), nd), "max": round(max(xs), nd)}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg():
    try:
        return open("/proc/loadavg").read().split()[:3]
    except OSError:
        return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def pin_process(pid, cpus):
    """Pins every thread of `pid` (threads started later inherit it)."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass
    except OSError:
        pass


def process_tree(pid):
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for c in f.read().split():
                    out.extend(process_tree(int(c)))
    except OSError:
        pass
    return out


# --------------------------------------------------------------------- sinks
class Sink:
    """The instant PutRecords sink (bench/tools sink), optionally pinned."""

    def __init__(self, tools, cpus=None):
        self.proc = subprocess.Popen([os.path.join(tools, "sink")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)
        self.port = int(self.proc.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{self.port}"
        if cpus:
            pin_process(self.proc.pid, cpus)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def _req(self, method, path):
        for attempt in (0, 1):
            try:
                self.conn.request(method, path)
                r = self.conn.getresponse()
                return r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt:
                    raise

    def count(self):
        return json.loads(self._req("GET", "/count"))

    def reset(self):
        self._req("POST", "/reset")

    def stop(self):
        try:
            self.conn.close()
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()


# ------------------------------------------------------------- environments
def env_for(kind, endpoint, stream="bench-stream", **extra):
    env = {
        "KINESIS_TELEMETRY_STREAM": stream,
        "AWS_ENDPOINT_URL_KINESIS": endpoint,
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    if kind in ("rust-sdk", "node"):
        env["BASELINE_LISTENER_PORT"] = str(free_port())
    env.update({k: str(v) for k, v in extra.items()})
    return env


def make_events(n, seed="b"):
    """n realistic function-log telemetry events (the simulator's text lines)."""
    out = []
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for i in range(n):
        lid = f"{seed}{i:08d}-{uuid.uuid4().hex[:12]}"
        rec = _TEXT_TEMPLATES[i % len(_TEXT_TEMPLATES)](i, lid)
        out.append(json.dumps({"time": now, "type": "function", "record": rec},
                              separators=(",", ":"), ensure_ascii=(i % 4 == 3)).encode())
    return out


def batches_of(events, size):
    return [b"[" + b",".join(events[i:i + size]) + b"]" for i in range(0, len(events), size)]


def listener_port(sim):
    uri = (sim.subscription or {}).get("destination", {}).get("URI", "")
    m = re.search(r":(\d+)", uri.split("//", 1)[-1])
    return int(m.group(1)) if m else None


class Feeder:
    """POSTs telemetry batches straight to an extension's listener, like Lambda
    does (one keep-alive connection, one batch at a time)."""

    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.retries = 0

    def post(self, body, deadline=None):
        for attempt in range(50):
            if deadline is not None and time.perf_counter() > deadline:
                break
            try:
                self.conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                r.read()
                if r.status == 200:
                    return
                self.retries += 1
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.retries += 1
            time.sleep(0.005 * (attempt + 1))
        raise RuntimeError(f"listener on port {self.port} keeps refusing batches")

    def close(self):
        self.conn.close()


def _clean_fn(fn):
    """callgrind_annotate's 'file:function [object]' -> 'function'."""
    fn = re.sub(r"\s+\[[^\]]*\]$", "", fn)
    fn = re.sub(r"^\?\?\?:", "", fn)
    m = re.match(r"^/\S*?/([^/]+)\.(?:c|s|h|rs):(.*)$", fn)
    if m:
        fn = m.group(2)
        if fn.startswith("0x"):  # an assembler routine without symbol: name it by its file
            fn = f"{m.group(1)} (musl asm)"
    return fn


def wrapper(dirname, real, prefix):
    """A script named like the extension that execs `prefix... real`."""
    os.makedirs(dirname, exist_ok=True)
    path = os.path.join(dirname, NAME)
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexec " + " ".join(prefix) + f' "{real}" "$@"\n')
    os.chmod(path, 0o755)
    return path


# ======================================================================= bench
class Bench:
    def __init__(self, a):
        self.a = a
        self.bins = {"ours": a.ours, "floor": a.floor}
        if a.rust_sdk and os.path.exists(a.rust_sdk):
            self.bins["rust-sdk"] = a.rust_sdk
        if a.node and os.path.exists(a.node):
            self.bins["node"] = a.node
        self.tools = a.tools
        self.tmp = tempfile.mkdtemp(prefix="bench-")
        # Measure a snapshot: others may rebuild layer/ while the bench runs.
        for attr in ("ours", "ours_arm64"):
            src = getattr(a, attr)
            if src and os.path.exists(src):
                dst = os.path.join(self.tmp, "snapshot-" + attr, NAME)
                os.makedirs(os.path.dirname(dst))
                shutil.copy2(src, dst)
                setattr(a, attr + "_source", src)
                setattr(a, attr, dst)
        self.bins["ours"] = a.ours
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

    # ------------------------------------------------------------ machine
    def machine(self):
        cpu = "?"
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass

        def out(cmd):
            try:
                return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
            except Exception:
                return None
        self.R["machine"] = {
            "cpu_model": cpu,
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "loadavg_start": loadavg(),
            "python": platform.python_version(),
            "node": out(["node", "--version"]),
            "rustc": out(["rustc", "--version"]),
            "valgrind": out(["valgrind", "--version"]),
            "git_commit": out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
            "git_dirty": bool(out(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml",
                                   "Cargo.lock"])),
            "perf_instructions": self.a.perf_instructions,
        }
        import hashlib
        for k, p in self.bins.items():
            with open(p, "rb") as f:
                data = f.read()
            shown = getattr(self.a, "ours_source", p) if k == "ours" else p
            self.R["binaries"][k] = {"label": LABEL[k], "path": os.path.relpath(shown, ROOT), "bytes": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest()[:16],
                                     "mtime_utc": dt.datetime.fromtimestamp(os.path.getmtime(p), dt.timezone.utc)
                                     .strftime("%Y-%m-%dT%H:%M:%SZ")}

    # ------------------------------------------------------------ startup
    def startup(self):
        runs = self.n(40, 5)
        base_env = {
            "KINESIS_TELEMETRY_STREAM": "bench-stream",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_SESSION_TOKEN": "token",
            "AWS_ENDPOINT_URL_KINESIS": "http://127.0.0.1:9",
            "AWS_LAMBDA_FUNCTION_NAME": "bench-fn",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "TZ": ":UTC",
        }
        res = {}
        cold_permitted = None
        # The floor that also binds a listener and subscribes: what the Telemetry API's
        # protocol costs any telemetry extension before its first next.
        targets = [(k, p, {}, ("warm", "cold")) for k, p in self.bins.items()]
        targets.append(("floor_subscribe", self.bins["floor"], {"FLOOR_SUBSCRIBE": "1"}, ("warm",)))
        # The binaries take turns, a few runs each per round, so that a slow spell of this
        # (virtual) machine falls on all of them rather than on whichever ran then.
        rounds = 4 if runs >= 8 else 1
        per_round = max(1, runs // rounds)
        rows_of = {}
        stderr_of = {}
        for mode in ("warm", "cold"):
            for rnd in range(rounds):
                for kind, path, extra_env, modes in targets:
                    if mode not in modes or (mode == "cold" and cold_permitted is False):
                        continue
                    env = dict(base_env, **extra_env)
                    if kind in ("rust-sdk", "node"):
                        env["BASELINE_LISTENER_PORT"] = str(free_port())
                    argv = [os.path.join(self.tools, "startup"), "--runs", str(per_round), "--warmup",
                            "2" if mode == "warm" else "1"]
                    if mode == "cold":
                        argv.append("--cold")
                    for k, v in env.items():
                        argv += ["--env", f"{k}={v}"]
                    argv += ["--", path]
                    log(f"startup {kind} {mode}: round {rnd + 1}/{rounds}, {per_round} runs")
                    p = subprocess.run(self.a.nice + argv, capture_output=True, text=True, timeout=600)
                    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
                    if mode == "cold" and rows and not any(r["cold"] for r in rows):
                        cold_permitted = False
                        res.setdefault(kind, {})["cold"] = {"permitted": False, "error": rows[0]["cold_error"]}
                        continue
                    if mode == "cold":
                        cold_permitted = True
                    rows_of.setdefault((kind, mode), []).extend(rows)
                    if p.returncode != 0:
                        stderr_of[(kind, mode)] = p.stderr[-2000:]
        for (kind, mode), rows in rows_of.items():
            ok = [r for r in rows if r["ok"]]
            res.setdefault(kind, {})[mode] = {
                "runs": len(rows), "failed": len(rows) - len(ok),
                "errors": sorted({r["error"] for r in rows if r["error"]}),
                "exec_ms": summ([r["exec_ms"] for r in ok]),
                "register_ms": summ([r["register_ms"] for r in ok]),
                "subscribe_ms": summ([r["subscribe_ms"] for r in ok]),
                "next_ms": summ([r["next_ms"] for r in ok]),
            }
            if (kind, mode) in stderr_of:
                res[kind][mode]["stderr"] = stderr_of[(kind, mode)]
        res["cold_page_cache_permitted"] = cold_permitted
        if cold_permitted is False:
            self.note("cold page cache not measured: writing /proc/sys/vm/drop_caches is not permitted here")
        self.R["startup"] = res

    # --------------------------------------------------------------- size
    def size(self):
        def mib(p):
            return round(os.path.getsize(p) / MIB, 3) if p and os.path.exists(p) else None
        res = {
            "ours": {"x86_64_bytes": os.path.getsize(self.a.ours), "x86_64_mib": mib(self.a.ours),
                     "arm64_bytes": os.path.getsize(self.a.ours_arm64) if os.path.exists(self.a.ours_arm64) else None,
                     "arm64_mib": mib(self.a.ours_arm64)},
            "floor": {"x86_64_bytes": os.path.getsize(self.a.floor), "x86_64_mib": mib(self.a.floor),
                      "arm64_bytes": os.path.getsize(self.a.floor_arm64) if os.path.exists(self.a.floor_arm64) else None,
                      "arm64_mib": mib(self.a.floor_arm64)},
        }
        if "rust-sdk" in self.bins:
            res["rust-sdk"] = {"x86_64_bytes": os.path.getsize(self.bins["rust-sdk"]),
                               "x86_64_mib": mib(self.bins["rust-sdk"]), "arm64_mib": None,
                               "note": "not built for arm64"}
        if "node" in self.bins:
            nd = os.path.dirname(os.path.dirname(self.bins["node"]))
            nm = os.path.join(nd, "node_modules")
            total = 0
            for d, _, fs in os.walk(nm):
                for f in fs:
                    try:
                        total += os.path.getsize(os.path.join(d, f))
                    except OSError:
                        pass
            node_bin = shutil.which("node")
            nb = os.path.getsize(os.path.realpath(node_bin)) if node_bin else None
            res["node"] = {"script_bytes": os.path.getsize(self.bins["node"]),
                           "node_modules_bytes": total, "node_modules_mib": round(total / MIB, 2),
                           "x86_64_mib": round((total + os.path.getsize(self.bins["node"])) / MIB, 2),
                           "node_binary_mib": round(nb / MIB, 1) if nb else None,
                           "note": "layer = script + node_modules; the node runtime itself not counted"}
        # Symbol build == shipped binary minus symbols? (makes the callgrind profile trustworthy)
        if self.a.symbols and os.path.exists(self.a.symbols):
            st = os.path.join(self.tmp, "stripped-symbols-build")
            try:
                subprocess.run(["objcopy", "--strip-all", self.a.symbols, st], check=True)
                res["ours"]["symbol_build_stripped_bytes"] = os.path.getsize(st)
                with open(st, "rb") as f1, open(self.a.ours, "rb") as f2:
                    res["ours"]["symbol_build_identical_code"] = f1.read() == f2.read()
            except Exception as e:  # noqa: BLE001
                res["ours"]["symbol_build_error"] = str(e)
        self.R["size"] = res

    # ---------------------------------------------------------- sim runs
    def sim_run(self, kind, path, sink_endpoint, invokes, lines, *, idle_ms=0, runtime_ms=0, env_extra=None,
                freeze=True, read_idle=False, skip_first=0, **simkw):
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

    # ---------------------------------------------------------------- rss
    def rss(self):
        sink = Sink(self.tools)
        res = {}
        try:
            for kind, path in self.bins.items():
                res[kind] = {}
                for lines, runs in ((10, self.n(5, 2)), (1000, self.n(5, 1))):
                    log(f"rss {kind}: 100 invokes x {lines} lines, {runs} runs")
                    rows = [self.sim_run(kind, path, sink.endpoint, 100, lines, read_idle=True)
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
        self.R["rss"] = res

    # ---------------------------------------------------------------- cpu
    def cpu(self):
        sink = Sink(self.tools)
        res = {}
        runs = self.n(5, 2)
        try:
            # The floor plus 8 threads that only sleep (this extension runs 9 threads: main,
            # listener, body reader, dispatcher, tiny_http's accept thread and 4-thread pool):
            # what the threads alone cost when Lambda freezes and thaws the process.
            labels = (("idle_start_shutdown", 0), ("invokes_100x10", 100), ("invokes_100x10_no_freeze", 100))
            targets = [(k, p, {}, labels) for k, p in self.bins.items()]
            targets.append(("floor_threads", self.bins["floor"], {"FLOOR_IDLE_THREADS": "8"}, labels))
            # Runs alternate between the binaries (see startup()).
            rows_of = {}
            for label, invokes in labels:
                for i in range(runs):
                    for kind, path, extra_env, _ in targets:
                        log(f"cpu {kind}: {label}, run {i + 1}/{runs}")
                        outf = os.path.join(self.tmp, f"perf-{kind}-{label}-{i}.csv")
                        w = wrapper(os.path.join(self.tmp, f"perfwrap-{kind}"), path,
                                    ["perf", "stat", "-x,", "-e", "task-clock,context-switches,page-faults",
                                     "-o", '"$PERF_OUT"', "--"])
                        r = self.sim_run(kind, w, sink.endpoint, invokes, 10,
                                         env_extra={"PERF_OUT": outf, **extra_env},
                                         freeze=not label.endswith("no_freeze"))
                        r.update(self._perf(outf))
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
        self.R["cpu"] = res

    @staticmethod
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

    # ----------------------------------------------------------- callgrind
    def callgrind(self):
        sink = Sink(self.tools)
        res = {}
        targets = [(k, p) for k, p in self.bins.items() if k in ("ours", "floor", "rust-sdk")]
        if self.a.symbols and os.path.exists(self.a.symbols):
            targets.append(("ours-symbols", self.a.symbols))
        try:
            for kind, path in targets:
                res[kind] = {}
                for label, invokes in (("idle_start_shutdown", 0), ("invokes_100x10", 100)):
                    if kind == "ours-symbols" and invokes == 0:
                        continue
                    outf = os.path.join(self.tmp, f"cg-{kind}-{label}.out")
                    w = wrapper(os.path.join(self.tmp, f"cgwrap-{kind}"), path,
                                ["valgrind", "--tool=callgrind", '--callgrind-out-file="$CG_OUT"',
                                 '--log-file="$CG_OUT.log"', "--"])
                    log(f"callgrind {kind}: {label}")
                    t0 = time.time()
                    r = self.sim_run(kind.replace("ours-symbols", "ours"), w, sink.endpoint, invokes, 10,
                                     env_extra={"CG_OUT": outf}, init_timeout_ms=120_000, timeout_ms=60_000,
                                     shutdown_deadline_ms=60_000, next_wait_timeout_s=120.0,
                                     freeze_wait_s=30.0)
                    ir = None
                    try:
                        for line in open(outf):
                            if line.startswith("summary:") or line.startswith("totals:"):
                                ir = int(line.split()[1])
                    except OSError:
                        pass
                    res[kind][label] = {"ok": r["ok"], "error": r.get("error"), "instructions": ir,
                                        "events": r.get("events"), "seconds": round(time.time() - t0, 1)}
                    if kind == "ours-symbols" and ir:
                        res[kind]["top_functions"] = self._annotate(outf)
                        res[kind]["inclusive"] = self._annotate_inclusive(outf)
                z = res[kind].get("idle_start_shutdown", {})
                a = res[kind].get("invokes_100x10", {})
                if a.get("instructions") and z.get("instructions") and a.get("events"):
                    res[kind]["per_1000_events"] = int((a["instructions"] - z["instructions"]) / a["events"] * 1000)
        finally:
            sink.stop()
        self.R["callgrind"] = res

    def _annotate(self, outf):
        try:
            p = subprocess.run(["callgrind_annotate", "--threshold=99", outf], capture_output=True,
                               text=True, timeout=120)
        except Exception as e:  # noqa: BLE001
            return [f"callgrind_annotate failed: {e}"]
        rows = []
        for line in p.stdout.splitlines():
            m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)", line)
            if m and "PROGRAM TOTALS" not in line:
                fn = _clean_fn(m.group(3))
                rows.append({"ir": int(m.group(1).replace(",", "")), "pct": float(m.group(2)),
                             "function": fn.strip()[:150]})
            if len(rows) >= 25:
                break
        return rows

    @staticmethod
    def _annotate_inclusive(outf):
        """Inclusive cost of the extension's own functions and a few library entry points."""
        try:
            p = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", outf],
                               capture_output=True, text=True, timeout=120)
        except Exception as e:  # noqa: BLE001
            return [{"function": f"callgrind_annotate failed: {e}", "ir": 0, "pct": 0}]
        keep = ("kinesis_telemetry_extension::", "CanonicalRequest::from", "ureq::request::do_call",
                "pthread_exit", "serde_json::de::from_str", "__libc_malloc_impl", "__libc_free", "memcpy")
        rows, seen = [], set()
        for line in p.stdout.splitlines():
            m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)", line)
            if not m or "PROGRAM TOTALS" in line:
                continue
            fn = _clean_fn(m.group(3))
            if fn in seen or not any(k in fn for k in keep) or fn.endswith("::main") or "'" in fn:
                continue
            seen.add(fn)
            rows.append({"ir": int(m.group(1).replace(",", "")), "pct": float(m.group(2)), "function": fn[:150]})
            if len(rows) >= 25:
                break
        return rows

    # -------------------------------------------------------------- flush
    def flush(self):
        res = {"ours": {}, "baselines": {}}
        sparse = dict(idle_ms=500, invokes=self.n(20, 8))
        steady = dict(idle_ms=5, invokes=self.n(100, 30))
        emu = self.kinesalite()
        for mode in ("adaptive", "end", "batch", "periodic"):
            res["ours"][mode] = {}
            for rate, spec in (("sparse", sparse), ("steady", steady)):
                extra = {"KINESIS_TELEMETRY_FLUSH": mode, "KINESIS_TELEMETRY_STREAM": self.stream(),
                         "AWS_REGION": emu.region}
                if rate == "sparse":
                    extra["KINESIS_TELEMETRY_MAX_DELAY_MS"] = 200
                log(f"flush ours {mode} {rate}: {spec['invokes']} invokes, idle {spec['idle_ms']} ms, kinesalite")
                r = self.sim_run("ours", self.bins["ours"], emu.endpoint, spec["invokes"], 10,
                                 idle_ms=spec["idle_ms"], runtime_ms=2, env_extra=extra, skip_first=5)
                res["ours"][mode][rate] = self._post_summary(r)
        sink = Sink(self.tools)
        try:
            for mode in ("adaptive", "end", "batch", "periodic"):
                log(f"flush ours {mode} steady: instant sink")
                r = self.sim_run("ours", self.bins["ours"], sink.endpoint, steady["invokes"], 10,
                                 idle_ms=steady["idle_ms"], runtime_ms=2,
                                 env_extra={"KINESIS_TELEMETRY_FLUSH": mode}, skip_first=5)
                res["ours"][mode]["steady_instant_sink"] = self._post_summary(r)
        finally:
            sink.stop()
        for kind in ("rust-sdk", "node"):
            if kind not in self.bins:
                continue
            res["baselines"][kind] = {}
            for rate, spec in (("sparse", sparse), ("steady", steady)):
                log(f"flush {kind} {rate}")
                r = self.sim_run(kind, self.bins[kind], emu.endpoint, spec["invokes"], 10,
                                 idle_ms=spec["idle_ms"], runtime_ms=2,
                                 env_extra={"KINESIS_TELEMETRY_STREAM": self.stream(), "AWS_REGION": emu.region},
                                 skip_first=5)
                res["baselines"][kind][rate] = self._post_summary(r)
        res["spec"] = {"sparse": sparse, "steady": steady, "lines": 10, "runtime_ms": 2,
                       "skipped_first_invokes": 5,
                       "sparse_env": "KINESIS_TELEMETRY_MAX_DELAY_MS=200"}
        self.R["flush"] = res

    @staticmethod
    def _post_summary(r):
        if not r["ok"]:
            return {"ok": False, "error": r.get("error")}
        return {"ok": True, "post_runtime_ms": summ(r["post_runtime_ms"]),
                "post_runtime_all_ms": summ(r["post_runtime_all_ms"]), "events": r["events"],
                "violations": r["violations"][:3]}

    # -------------------------------------------------------------- drain
    def drain(self):
        n_events = 10_000
        runs = self.n(5, 2)
        events = make_events(n_events, "d")
        bodies = batches_of(events, 1000)
        res = {"events": n_events, "event_bytes": sum(len(e) for e in events)}
        res["kinesalite_capacity"] = self.kinesalite_capacity()
        sink = Sink(self.tools)
        try:
            for target in ("kinesalite", "instant_sink"):
                res[target] = {}
                for fmt in ("json", "kpl"):
                    rows = []
                    log(f"drain {fmt} -> {target}: {runs} runs")
                    for _ in range(runs):
                        if target == "kinesalite":
                            emu = self.kinesalite()
                            ep, extra = emu.endpoint, {"KINESIS_TELEMETRY_STREAM": self.stream(),
                                                       "AWS_REGION": emu.region}
                        else:
                            ep, extra = sink.endpoint, {}
                            sink.reset()
                        extra.update({"KINESIS_TELEMETRY_FLUSH": "batch",
                                      "KINESIS_TELEMETRY_BATCH_MAX_AGE_MS": 900000,
                                      "KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES": 64 * MIB,
                                      "KINESIS_TELEMETRY_FORMAT": fmt})
                        rows.append(self._drain_once(ep, extra, bodies, sink if target == "instant_sink" else None))
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
        self.R["drain"] = res

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

    def _drain_once(self, endpoint, extra, bodies, sink):
        env = env_for("ours", endpoint, **extra)
        out = {"ok": False}
        with LambdaSim(self.bins["ours"], env, freeze=False) as sim:
            try:
                sim.start()
                time.sleep(0.05)
                f = Feeder(listener_port(sim))
                for b in bodies:
                    f.post(b)
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

    # --------------------------------------------------------- throughput
    def throughput(self):
        res = {}
        me = os.sched_getaffinity(0)
        two = len(me) >= 2 and {0, 1} <= me
        if not two:
            self.note("throughput: fewer than 2 CPUs available; the extension is not pinned apart from the load")
        sink = Sink(self.tools, {1} if two else None)
        try:
            # The sink's own capacity (sinkload pinned to CPU 0, sink on CPU 1).
            p = subprocess.run((["taskset", "-c", "0"] if two else []) +
                               [os.path.join(self.tools, "sinkload"), "--addr", f"127.0.0.1:{sink.port}",
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
            res["kinesalite_capacity"] = self.kinesalite_capacity()
            plan = [("ours", "instant_sink", self.n(300_000, 100_000), self.n(5, 1)),
                    ("ours", "kinesalite", self.n(20_000, 10_000), self.n(3, 1)),
                    ("rust-sdk", "instant_sink", self.n(100_000, 20_000), self.n(3, 1)),
                    ("rust-sdk", "kinesalite", self.n(20_000, 10_000), self.n(1, 1)),
                    ("node", "instant_sink", self.n(100_000, 20_000), self.n(3, 1)),
                    ("node", "kinesalite", self.n(20_000, 10_000), self.n(1, 1))]
            for kind, target, n, runs in plan:
                if kind not in self.bins:
                    continue
                rows = []
                for _ in range(runs):
                    log(f"throughput {kind} -> {target}: {n} events")
                    rows.append(self._throughput_once(kind, target, n, body, sink, two))
                ok = [r for r in rows if r.get("events_per_s")]
                res.setdefault(kind, {})[target] = {
                    "events": n, "runs": len(rows), "failed": len(rows) - len(ok),
                    "errors": [r.get("error") for r in rows if r.get("error")][:2],
                    "events_per_s": summ([r["events_per_s"] for r in ok], 0),
                    "cpu_utilisation": summ([r.get("cpu_util") for r in ok], 2),
                    "events_per_cpu_s": summ([r.get("events_per_cpu_s") for r in ok], 0),
                    "feeder_retries": sum(r.get("retries", 0) for r in rows),
                }
        finally:
            os.sched_setaffinity(0, me)
            sink.stop()
        res["method"] = ("extension (all threads) pinned to CPU 0; feeder, simulator and sink/kinesalite on CPU 1; "
                         "1000-event batches (~300 KB) POSTed back to back to the listener during one long invoke "
                         "(this extension with KINESIS_TELEMETRY_FLUSH=end, which sends full requests while it "
                         "waits for runtimeDone, and a 1 GiB buffer cap); time from the first POST until the sink "
                         "has every event (this extension: all but the last partial request, which `end` keeps "
                         "for runtimeDone)")
        self.R["throughput"] = res

    def _throughput_once(self, kind, target, n, body, sink, two):
        if target == "kinesalite":
            emu = self.kinesalite()
            if two:
                for pid in process_tree(emu.proc.pid):
                    pin_process(pid, {1})
            stream = self.stream()
            endpoint, extra = emu.endpoint, {"KINESIS_TELEMETRY_STREAM": stream, "AWS_REGION": emu.region}
        else:
            sink.reset()
            endpoint, extra = sink.endpoint, {}
        if kind == "ours":
            # `end` keeps sending full batches while it waits for the invoke's runtimeDone (the
            # modes that pause at once send only when an invoke starts); a 1 GiB cap so that
            # the queue never reaches it (at the cap the extension stops reading and pauses).
            extra.update({"KINESIS_TELEMETRY_FLUSH": "end", "KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES": 1024 * MIB})
        env = env_for(kind, endpoint, **extra)
        out = {}
        sim = LambdaSim(self.bins[kind], env, freeze=False, timeout_ms=600_000, memory_mb=1024)
        try:
            sim.start()
            if two:
                pin_process(sim.pid, {0})
            # One long invoke keeps the extension thawed (sending) while we feed it.
            th = threading.Thread(target=self._bg_invoke, args=(sim,), daemon=True)
            th.start()
            time.sleep(0.2)
            port = listener_port(sim)
            f = Feeder(port)
            cpu0 = self._cpu_ticks(sim.pid)
            t0 = time.perf_counter()
            fed = 0
            deadline = t0 + 60
            base = self._delivered(target, sink, stream if target == "kinesalite" else None, None)
            while fed < n and time.perf_counter() < deadline:
                f.post(body, deadline)
                fed += 1000
            f.close()
            # `end` mode keeps a last partial request (< 500 records) for runtimeDone.
            want = fed - 500 if kind == "ours" else fed
            got = 0
            state = base
            last, last_change = -1, time.perf_counter()
            while time.perf_counter() < deadline:
                got, state = self._delivered(target, sink, stream if target == "kinesalite" else None, state,
                                             counting=True)
                if got >= want:
                    break
                if got != last:
                    last, last_change = got, time.perf_counter()
                elif time.perf_counter() - last_change > 10:
                    break  # stalled: nothing arrived for 10 s
                time.sleep(0.01 if target == "instant_sink" else 0.05)
            t1 = time.perf_counter()
            cpu1 = self._cpu_ticks(sim.pid)
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

    def _bg_invoke(self, sim):
        try:
            sim.invoke(0, runtime_ms=300_000)
        except Exception:  # noqa: BLE001 - the simulator is closed under it
            pass

    @staticmethod
    def _cpu_ticks(pid):
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            return None

    def _delivered(self, target, sink, stream, state, counting=False):
        if target == "instant_sink":
            c = sink.count()["records"]
            return (c, None) if counting else None
        # kinesalite: follow the shard with GetRecords
        cl = self.kinesalite().client()
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

    # ------------------------------------------------------------ profile
    def profile(self):
        """Native profile of the symbol build: `perf record -e cpu-clock` (sampling; works where
        hardware counters do not) attached to the running extension, for the 100 x 10 workload
        and for a throughput run to the instant sink. Top functions by self time."""
        sym = self.a.symbols
        if not sym or not os.path.exists(sym):
            self.note("profile: no symbol build, skipped")
            return
        res = {}
        sink = Sink(self.tools)
        try:
            # 1. the 100 x 10 workload
            data = os.path.join(self.tmp, "perf-invokes.data")
            with LambdaSim(sym, env_for("ours", sink.endpoint)) as sim:
                sim.start()
                rec = self._perf_attach(sim.pid, data)
                for _ in range(100):
                    sim.invoke(10)
                self._perf_stop(rec)
                sim.shutdown()
            res["invokes_100x10"] = self._perf_top(data)
            # 2. throughput: 100,000 events to the instant sink
            data = os.path.join(self.tmp, "perf-throughput.data")
            sink.reset()
            env = env_for("ours", sink.endpoint, KINESIS_TELEMETRY_FLUSH="end",
                          KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES=1024 * MIB)
            body = batches_of(make_events(1000, "p"), 1000)[0]
            sim = LambdaSim(sym, env, freeze=False, timeout_ms=600_000, memory_mb=1024)
            try:
                sim.start()
                threading.Thread(target=self._bg_invoke, args=(sim,), daemon=True).start()
                time.sleep(0.2)
                rec = self._perf_attach(sim.pid, data)
                f = Feeder(listener_port(sim))
                for _ in range(100):
                    f.post(body, time.perf_counter() + 30)
                f.close()
                end = time.time() + 30
                while sink.count()["records"] < 99_500 and time.time() < end:
                    time.sleep(0.01)
                self._perf_stop(rec)
            finally:
                sim.close()
            res["throughput_100k"] = self._perf_top(data)
        finally:
            sink.stop()
        self.R["profile"] = res

    @staticmethod
    def _perf_attach(pid, data):
        p = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4999", "-p", str(pid), "-o", data],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)
        return p

    @staticmethod
    def _perf_stop(p):
        p.send_signal(2)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()

    @staticmethod
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

    # ----------------------------------------------------------- timeline
    def timeline(self):
        res = {}
        for kind in ("ours", "floor"):
            trace = os.path.join(self.tmp, f"strace-{kind}.txt")
            argv = [os.path.join(self.tools, "startup"), "--runs", "1", "--warmup", "0", "--timeout-ms", "20000",
                    "--env", "KINESIS_TELEMETRY_STREAM=bench-stream", "--env", "AWS_REGION=us-east-1",
                    "--env", "AWS_ACCESS_KEY_ID=AKIDEXAMPLE", "--env", "AWS_SECRET_ACCESS_KEY=secret",
                    "--env", "AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:9",
                    "--env", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128",
                    "--", "strace", "-f", "-ttt", "-s", "80", "-o", trace,
                    "-e", "trace=execve,connect,sendto,recvfrom,bind,listen,clone,clone3,openat,mmap,write,read",
                    self.bins[kind]]
            log(f"strace timeline {kind}")
            p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            harness = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
            res[kind] = {"steps": self._parse_strace(trace), "harness": harness[0] if harness else None}
        self.R["timeline"] = res

    @staticmethod
    def _parse_strace(path):
        try:
            lines = open(path).read().splitlines()
        except OSError:
            return []
        steps = []
        t0 = None
        seen = set()
        counts = {"mmap": 0, "openat": 0, "clone": 0}

        def add(key, label, t):
            if key not in seen:
                seen.add(key)
                steps.append({"step": label, "ms": round((t - t0) * 1000, 3)})
        pending_recv = None
        for line in lines:
            m = re.match(r"(\d+)\s+(\d+\.\d+)\s+(.*)", line)
            if not m:
                continue
            t, call = float(m.group(2)), m.group(3)
            if call.startswith("execve(") and t0 is None:
                t0 = t
                add("exec", "execve", t)
                continue
            if t0 is None:
                continue
            if call.startswith("mmap("):
                counts["mmap"] += 1
            if call.startswith("openat("):
                counts["openat"] += 1
                fm = re.search(r'openat\([^,]*, "([^"]*)"', call)
                if fm and "openat" not in seen:
                    add("openat", f"first file opened ({fm.group(1)})", t)
            if call.startswith(("clone(", "clone3(")):
                counts["clone"] += 1
                add(f"clone{counts['clone']}", f"thread {counts['clone']} started", t)
            if call.startswith("connect(") and "connect" not in seen:
                add("connect", "connect to Extensions API", t)
            if call.startswith(("sendto(", "write(")):
                if "/extension/register" in call:
                    add("register", "register request sent", t)
                    pending_recv = "register_ok"
                elif "/2022-07-01/telemetry" in call:
                    add("subscribe", "subscribe request sent", t)
                    pending_recv = "subscribe_ok"
                elif "/extension/event/next" in call:
                    add("next", "first event/next sent", t)
            if (call.startswith(("recvfrom(", "read(", "<... recvfrom resumed>", "<... read resumed>"))
                    and "HTTP/1.1 200" in call and pending_recv):
                add(pending_recv, pending_recv.replace("_ok", " answered (200)"), t)
                pending_recv = None
            if call.startswith("bind(") and "bind" not in seen:
                add("bind", "telemetry listener bound", t)
            if call.startswith("listen(") and "listen" not in seen:
                add("listen", "telemetry listener listening", t)
        steps.append({"counts_after_exec": counts})
        return steps

    # ------------------------------------------------------------ output
    def run(self, sections):
        self.machine()
        for s in sections:
            t0 = time.time()
            try:
                getattr(self, s)()
            except Exception as e:  # noqa: BLE001 - keep the other sections
                import traceback
                self.R.setdefault("section_errors", {})[s] = traceback.format_exc()[-3000:]
                log(f"section {s} failed: {e}")
            self.R.setdefault("section_seconds", {})[s] = round(time.time() - t0, 1)
            log(f"section {s}: {self.R['section_seconds'][s]} s")
        self.R["machine"]["loadavg_end"] = loadavg()
        if self.a.bloat and os.path.exists(self.a.bloat):
            self.R["bloat"] = open(self.a.bloat).read()
        if self._kinesalite is not None:
            self._kinesalite.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.R


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--ours-arm64", default="")
    ap.add_argument("--symbols", default="", help="unstripped build of ours (callgrind profile)")
    ap.add_argument("--floor", required=True)
    ap.add_argument("--floor-arm64", default="")
    ap.add_argument("--rust-sdk", default="")
    ap.add_argument("--node", default="")
    ap.add_argument("--tools", required=True)
    ap.add_argument("--bloat", default="")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--md", default=os.path.join(HERE, "results.md"))
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke test, not for figures)")
    ap.add_argument("--nice", default="-10", help="nice level of the start-up harness ('' for none)")
    ap.add_argument("--perf-instructions", default="unknown")
    ap.add_argument("--build-info", default="")
    all_sections = ["startup", "size", "timeline", "rss", "cpu", "callgrind", "profile", "flush", "drain",
                    "throughput"]
    ap.add_argument("--only", default="", help="comma-separated sections")
    ap.add_argument("--skip", default="", help="comma-separated sections")
    a = ap.parse_args()
    a.nice = ["nice", "-n", a.nice] if a.nice else []
    sections = [s for s in (a.only.split(",") if a.only else all_sections) if s and s not in a.skip.split(",")]
    b = Bench(a)
    R = b.run(sections)
    if a.build_info and os.path.exists(a.build_info):
        R["build"] = json.load(open(a.build_info))
    # Merge into an existing results file when only some sections ran.
    if a.only and os.path.exists(a.out):
        try:
            old = json.load(open(a.out))
            for k, v in R.items():
                old[k] = v
            R = old
        except ValueError:
            pass
    with open(a.out, "w") as f:
        json.dump(R, f, indent=2)
    import report  # noqa: E402 - bench/report.py
    md = report.render(R)
    with open(a.md, "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
