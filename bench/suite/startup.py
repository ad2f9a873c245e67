"""Section `startup`: exec -> register / subscribe / first event/next, warm and cold page
cache, for every binary, through the bench/tools `startup` harness."""

from __future__ import annotations

import json
import os
import subprocess

from .common import free_port, log, summ


# What every binary starts with (also bench/startup_ab.py's).
BASE_ENV = {
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


def run(b):
    runs = b.n(40, 5)
    base_env = BASE_ENV
    res = {}
    cold_permitted = None
    # The floor that also binds a listener and subscribes: what the Telemetry API's
    # protocol costs any telemetry extension before its first next.
    targets = [(k, p, {}, ("warm", "cold")) for k, p in b.bins.items()]
    targets.append(("floor_subscribe", b.bins["floor"], {"FLOOR_SUBSCRIBE": "1"}, ("warm",)))
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
                argv = [os.path.join(b.tools, "startup"), "--runs", str(per_round), "--warmup",
                        "2" if mode == "warm" else "1"]
                if mode == "cold":
                    argv.append("--cold")
                for k, v in env.items():
                    argv += ["--env", f"{k}={v}"]
                argv += ["--", path]
                log(f"startup {kind} {mode}: round {rnd + 1}/{rounds}, {per_round} runs")
                p = subprocess.run(b.a.nice + argv, capture_output=True, text=True, timeout=600)
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
        b.note("cold page cache not measured: writing /proc/sys/vm/drop_caches is not permitted here")
    b.R["startup"] = res
