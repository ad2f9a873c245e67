"""Section `size`: binary sizes (x86_64, arm64), the Node baseline's node_modules, and
whether the symbol build is the shipped binary plus symbols."""

from __future__ import annotations

import os
import shutil
import subprocess

from .common import MIB


def run(b):
    def mib(p):
        return round(os.path.getsize(p) / MIB, 3) if p and os.path.exists(p) else None
    res = {
        "ours": {"x86_64_bytes": os.path.getsize(b.a.ours), "x86_64_mib": mib(b.a.ours),
                 "arm64_bytes": os.path.getsize(b.a.ours_arm64) if os.path.exists(b.a.ours_arm64) else None,
                 "arm64_mib": mib(b.a.ours_arm64)},
        "floor": {"x86_64_bytes": os.path.getsize(b.a.floor), "x86_64_mib": mib(b.a.floor),
                  "arm64_bytes": os.path.getsize(b.a.floor_arm64) if os.path.exists(b.a.floor_arm64) else None,
                  "arm64_mib": mib(b.a.floor_arm64)},
    }
    if "rust-sdk" in b.bins:
        res["rust-sdk"] = {"x86_64_bytes": os.path.getsize(b.bins["rust-sdk"]),
                           "x86_64_mib": mib(b.bins["rust-sdk"]), "arm64_mib": None,
                           "note": "not built for arm64"}
    if "node" in b.bins:
        nd = os.path.dirname(os.path.dirname(b.bins["node"]))
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
        res["node"] = {"script_bytes": os.path.getsize(b.bins["node"]),
                       "node_modules_bytes": total, "node_modules_mib": round(total / MIB, 2),
                       "x86_64_mib": round((total + os.path.getsize(b.bins["node"])) / MIB, 2),
                       "node_binary_mib": round(nb / MIB, 1) if nb else None,
                       "note": "layer = script + node_modules; the node runtime itself not counted"}
    # Symbol build == shipped binary minus symbols? (makes the callgrind profile trustworthy)
    if b.a.symbols and os.path.exists(b.a.symbols):
        st = os.path.join(b.tmp, "stripped-symbols-build")
        try:
            subprocess.run(["objcopy", "--strip-all", b.a.symbols, st], check=True)
            res["ours"]["symbol_build_stripped_bytes"] = os.path.getsize(st)
            with open(st, "rb") as f1, open(b.a.ours, "rb") as f2:
                res["ours"]["symbol_build_identical_code"] = f1.read() == f2.read()
        except Exception as e:  # noqa: BLE001
            res["ours"]["symbol_build_error"] = str(e)
    b.R["size"] = res
