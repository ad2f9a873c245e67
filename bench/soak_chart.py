"""The soak's picture: RSS, CPU and threads (and open files) of the extension
over time, bursts shaded, from bench/soak-results.json into bench/soak.png.

    bench/soak.sh runs it last (matplotlib in bench/.chart-venv, as chart.sh)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(results: Path, out: Path) -> None:
    r = json.loads(results.read_text())
    s = r["samples"]
    t = [x["t"] / 60.0 for x in s]
    # CPU ms per second between consecutive samples (all threads)
    cpu_t, cpu = [], []
    for a, b in zip(s, s[1:]):
        if b["t"] <= a["t"]:
            continue
        if a["cpu_ns"] is not None and b["cpu_ns"] is not None:
            ms = (b["cpu_ns"] - a["cpu_ns"]) / 1e6
        else:
            ms = (b["cpu_ticks"] - a["cpu_ticks"]) * 10.0
        cpu_t.append(b["t"] / 60.0)
        cpu.append(ms / (b["t"] - a["t"]))
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    panels = [
        (axes[0], t, [x["rss_kb"] / 1024.0 for x in s], "RSS (MiB)", "#1b7f3b"),
        (axes[1], cpu_t, cpu, "CPU (ms per s, all threads)", "#d9822b"),
        (axes[2], t, [x["threads"] for x in s], "threads / open files", "#3d6fb6"),
    ]
    for ax, xs, ys, label, color in panels:
        for p in r["phases"]:
            if p["kind"] == "burst":
                ax.axvspan(p["t0"] / 60.0, p["t1"] / 60.0, color="#eeeeee", lw=0)
        ax.plot(xs, ys, color=color, lw=1, label=label.split(" /")[0])
        ax.set_ylabel(label, fontsize=9)
        ax.set_ylim(bottom=0)
    axes[1].set_yscale("symlog", linthresh=1.0)
    axes[2].plot(t, [x["fds"] for x in s], color="#9e9e9e", lw=1, label="open files")
    axes[2].set_ylim(0, max(max(x["fds"] for x in s), max(x["threads"] for x in s)) * 1.15)
    axes[2].legend(fontsize=8, loc="upper right")
    axes[2].set_xlabel("minutes (grey: bursts)")
    m = r["summary"]
    fig.suptitle(f"kinesis-telemetry-extension soak, Lambda Managed Instances: {m['minutes']:g} min, "
                 f"{m['burst_s']:g} s bursts at {m['rate']:g} events/s, {m['idle_s']:g} s idle", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "soak-results.json",
         Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "soak.png")
