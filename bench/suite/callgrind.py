"""Section `callgrind`: instruction counts (valgrind --tool=callgrind) of the `cpu` workload
and the symbol build's top functions, self and inclusive."""

from __future__ import annotations

import os
import re
import subprocess
import time

from .common import log
from .harness import Sink, wrapper


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


def run(b):
    sink = Sink(b.tools)
    res = {}
    targets = [(k, p) for k, p in b.bins.items() if k in ("ours", "floor", "rust-sdk")]
    if b.a.symbols and os.path.exists(b.a.symbols):
        targets.append(("ours-symbols", b.a.symbols))
    try:
        for kind, path in targets:
            res[kind] = {}
            for label, invokes in (("idle_start_shutdown", 0), ("invokes_100x10", 100)):
                if kind == "ours-symbols" and invokes == 0:
                    continue
                outf = os.path.join(b.tmp, f"cg-{kind}-{label}.out")
                w = wrapper(os.path.join(b.tmp, f"cgwrap-{kind}"), path,
                            ["valgrind", "--tool=callgrind", '--callgrind-out-file="$CG_OUT"',
                             '--log-file="$CG_OUT.log"', "--"])
                log(f"callgrind {kind}: {label}")
                t0 = time.time()
                r = b.sim_run(kind.replace("ours-symbols", "ours"), w, sink.endpoint, invokes, 10,
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
                    res[kind]["top_functions"] = _annotate(outf)
                    res[kind]["inclusive"] = _annotate_inclusive(outf)
            z = res[kind].get("idle_start_shutdown", {})
            a = res[kind].get("invokes_100x10", {})
            if a.get("instructions") and z.get("instructions") and a.get("events"):
                res[kind]["per_1000_events"] = int((a["instructions"] - z["instructions"]) / a["events"] * 1000)
    finally:
        sink.stop()
    b.R["callgrind"] = res


def _annotate(outf):
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
