"""The machine, toolchain and binaries (sizes, hashes, mtimes) the figures were taken on; runs first."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import subprocess

from .common import LABEL, ROOT, loadavg


def run(b):
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
    b.R["machine"] = {
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
        "perf_instructions": b.a.perf_instructions,
    }
    for k, p in b.bins.items():
        with open(p, "rb") as f:
            data = f.read()
        shown = getattr(b.a, f"{k}_source", p)
        b.R["binaries"][k] = {"label": LABEL[k], "path": os.path.relpath(shown, ROOT), "bytes": len(data),
                              "sha256": hashlib.sha256(data).hexdigest()[:16],
                              "mtime_utc": dt.datetime.fromtimestamp(os.path.getmtime(p), dt.timezone.utc)
                              .strftime("%Y-%m-%dT%H:%M:%SZ")}
