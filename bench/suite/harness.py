"""What drives an extension in every section: the instant sink, the feeder, the
environment, realistic telemetry bodies and exec wrappers."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import subprocess
import time
import uuid

from lambda_sim import _TEXT_TEMPLATES

from .common import NAME, free_port, pin_process


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

    def timed_posts(self, body, n, gap_s=0.01):
        """POSTs `body` `n` times, `gap_s` apart: each answer's wait in ms."""
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.post(body)
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(gap_s)
        return times

    def close(self):
        self.conn.close()


def wrapper(dirname, real, prefix):
    """A script named like the extension that execs `prefix... real`."""
    os.makedirs(dirname, exist_ok=True)
    path = os.path.join(dirname, NAME)
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexec " + " ".join(prefix) + f' "{real}" "$@"\n')
    os.chmod(path, 0o755)
    return path


def bg_invoke(sim):
    """One long invoke (300 s of runtime) that keeps the extension thawed; run on a
    thread, ends when the simulator is closed under it."""
    try:
        sim.invoke(0, runtime_ms=300_000)
    except Exception:  # noqa: BLE001 - the simulator is closed under it
        pass
