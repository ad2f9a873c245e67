#!/usr/bin/env python3
"""Before/after figures of the hardening issue (not part of CI): post-runtime
time under heavy logging, and the extension's liveness, peak memory and open
files under each listener attack. Runs each given binary under the Lambda
simulator (Lambda's 1,024-file limit) against kinesalite.

    .deps/venv/bin/python bench/hardening.py --ext old=/tmp/ext-orig \\
        --ext new=layer/extensions/kinesis-telemetry-extension [--invokes 20]

Prints a markdown table per section."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import emulators  # noqa: E402
from conftest import ext_env, new_stream  # noqa: E402
from lambda_sim import LambdaSim  # noqa: E402

MIB = 1 << 20


def p99(xs):
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def heavy_logging(ext, emu, lines, invokes, timeout_ms=5000):
    name, _ = new_stream(emu, 2)
    env = ext_env(emu, name, RUST_LOG="warn")
    with LambdaSim(ext, env, timeout_ms=timeout_ms) as sim:
        sim.start()
        for _ in range(invokes):
            sim.invoke(log_lines=lines)
        sim.shutdown()
    post = sim.post_runtime_ms
    return statistics.median(post), p99(post), sim.invoke_timeouts


def vmhwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def port_of(sim):
    from urllib.parse import urlsplit
    return urlsplit(sim.subscription["destination"]["URI"]).port


# Each attack: (name, function(port) -> cleanup callable). It runs while the
# simulator keeps invoking; the cleanup ends it.

def crash_post(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST / HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n[1,2")
    s.shutdown(socket.SHUT_WR)
    return s.close


def crash_get(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n")
    return s.close


def stall_get(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n")
    return s.close


def idle_connections(port, n=1100):
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    return lambda: [s.close() for s in socks]


def big_stream(head, size):
    def attack(port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(head)
            piece = b"a" * MIB
            for _ in range(size // MIB):
                s.sendall(piece)
        except OSError:
            pass
        return s.close
    return attack


def stalled_bodies(port, n=31):
    socks = []
    body = b"x" * (4 * MIB - 1)
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            s.sendall(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (4 * MIB) + body)
        except OSError:
            pass
    return lambda: [s.close() for s in socks]


ATTACKS = [
    ("POST Content-Length 2^63-1, half-close", crash_post),
    ("GET Content-Length 2^64-1", crash_get),
    ("GET Content-Length 2000, no body, held", stall_get),
    ("1,100 idle connections (1,024-file limit)", idle_connections),
    ("256 MiB header line", big_stream(b"POST / HTTP/1.1\r\nX: ", 256 * MIB)),
    ("64 MiB URL", big_stream(b"POST /", 64 * MIB)),
    ("31 bodies stalled at 4 MiB - 1", stalled_bodies),
]


def attack_run(ext, emu, attack):
    name, _ = new_stream(emu)
    env = ext_env(emu, name, KINESIS_TELEMETRY_FLUSH="end", RUST_LOG="warn")
    # a new connection per delivery, as after Lambda's idle ones are closed
    with LambdaSim(ext, env, freeze=False, timeout_ms=3000, telemetry_post_timeout_s=2,
                   telemetry_keepalive=False) as sim:
        sim.start()
        sim.invoke(log_lines=10)
        pid, port = sim.pid, port_of(sim)
        cleanup = [None]
        t = threading.Thread(target=lambda: cleanup.__setitem__(0, attack(port)), daemon=True)
        t.start()
        t.join(timeout=60)
        peak_fds = fds(pid)
        timeouts = 0
        for _ in range(3):
            if sim.exit_code is not None:
                break
            r = sim.invoke(log_lines=20)
            timeouts += r.timed_out
            peak_fds = max(peak_fds, fds(pid))
        alive_during = sim.exit_code is None
        rss = vmhwm_kb(pid) if alive_during else 0
        if cleanup[0]:
            cleanup[0]()
        if alive_during:
            r = sim.invoke(log_lines=20)
            timeouts += r.timed_out
        res = sim.shutdown()
        lost = len(sim.lost_before_shutdown)
    return {"alive": alive_during and res.exit_code == 0 and not res.killed,
            "timeouts": timeouts, "lost": lost, "rss_mib": rss / 1024, "fds": peak_fds,
            "post": max(sim.post_runtime_ms[1:] or [0])}


CPU_CHILD = r"""
import resource, sys
sys.path.insert(0, sys.argv[4])
from lambda_sim import LambdaSim
env = {"KINESIS_TELEMETRY_STREAM": sys.argv[2], "AWS_REGION": "us-east-1",
       "AWS_ENDPOINT_URL_KINESIS": sys.argv[3], "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
       "AWS_SECRET_ACCESS_KEY": "secret", "RUST_LOG": "warn"}
with LambdaSim(sys.argv[1], env) as sim:
    sim.start()
    for _ in range(100):
        sim.invoke(log_lines=10)
    sim.shutdown()
r = resource.getrusage(resource.RUSAGE_CHILDREN)  # the extension: the one child reaped
print((r.ru_utime + r.ru_stime) * 1000.0, r.ru_maxrss / 1024.0)
"""


def cpu_run(ext, emu):
    """CPU (user + system) of the extension's whole life, 100 frozen invokes x 10 lines:
    from the rusage of the one child a fresh interpreter reaps. (Its ru_maxrss is not
    the extension's: it keeps the forked interpreter's size from before exec.)"""
    import subprocess
    name, _ = new_stream(emu)
    out = subprocess.run([sys.executable, "-c", CPU_CHILD, ext, name, emu.endpoint, str(ROOT / "tests")],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ext", action="append", required=True, metavar="LABEL=PATH")
    ap.add_argument("--invokes", type=int, default=20)
    ap.add_argument("--only", choices=["post", "attacks", "cpu"])
    ap.add_argument("--runs", type=int, default=5, help="runs per binary for the CPU figure")
    a = ap.parse_args()
    exts = [e.split("=", 1) for e in a.ext]
    with tempfile.TemporaryDirectory() as tmp:
        emu = emulators.start_kinesalite(Path(tmp))
        try:
            if a.only in (None, "post"):
                print("\n| binary | lines/invoke | post-runtime median | p99 | invoke timeouts |")
                print("|---|---|---|---|---|")
                for label, path in exts:
                    for lines in (400, 1500, 3000):
                        med, p, to = heavy_logging(path, emu, lines, a.invokes)
                        print(f"| {label} | {lines} | {med:.0f} ms | {p:.0f} ms | {to} |", flush=True)
            if a.only in (None, "cpu"):
                print("\n| binary | CPU, 100 frozen invokes x 10 lines (median of runs) |")
                print("|---|---|")
                results = {label: [] for label, _ in exts}
                for _ in range(a.runs):  # the binaries take turns
                    for label, path in exts:
                        results[label].append(cpu_run(path, emu))
                for label, runs in results.items():
                    cpu = statistics.median(r[0] for r in runs)
                    print(f"| {label} | {cpu:.1f} ms |", flush=True)
            if a.only in (None, "attacks"):
                print("\n| attack | binary | survives | post-runtime max | invokes timed out | events lost "
                      "| peak RSS | open files |")
                print("|---|---|---|---|---|---|---|---|")
                for title, attack in ATTACKS:
                    for label, path in exts:
                        try:
                            r = attack_run(path, emu, attack)
                        except Exception as e:  # the extension died under the attack
                            print(f"| {title} | {label} | NO ({type(e).__name__}) | – | – | – | – | – |", flush=True)
                            continue
                        print(f"| {title} | {label} | {'yes' if r['alive'] else 'NO'} | {r['post']:.0f} ms | "
                              f"{r['timeouts']} | "
                              f"{r['lost']} | {r['rss_mib']:.1f} MiB | {r['fds']} |", flush=True)
        finally:
            emu.stop()


if __name__ == "__main__":
    main()
