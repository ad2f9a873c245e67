"""Section `timeline`: one start-up of ours and of the floor under strace: exec ->
register -> subscribe -> next, with the threads, files and mappings on the way."""

from __future__ import annotations

import json
import os
import re
import subprocess

from .common import log


def run(b):
    res = {}
    for kind in ("ours", "floor"):
        trace = os.path.join(b.tmp, f"strace-{kind}.txt")
        argv = [os.path.join(b.tools, "startup"), "--runs", "1", "--warmup", "0", "--timeout-ms", "20000",
                "--env", "KINESIS_TELEMETRY_STREAM=bench-stream", "--env", "AWS_REGION=us-east-1",
                "--env", "AWS_ACCESS_KEY_ID=AKIDEXAMPLE", "--env", "AWS_SECRET_ACCESS_KEY=secret",
                "--env", "AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:9",
                "--env", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128",
                "--", "strace", "-f", "-ttt", "-s", "80", "-o", trace,
                "-e", "trace=execve,connect,sendto,recvfrom,bind,listen,clone,clone3,openat,mmap,write,read",
                b.bins[kind]]
        log(f"strace timeline {kind}")
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        harness = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
        res[kind] = {"steps": _parse_strace(trace), "harness": harness[0] if harness else None}
    b.R["timeline"] = res


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
