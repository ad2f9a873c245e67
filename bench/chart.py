"""The bench's picture: cold start, binary size, peak RSS and CPU of this
extension beside the floor and the Rust SDK and Node.js baselines, drawn from
bench/results.json into bench/chart.png (shown in the README).

    bench/chart.sh            (makes its own venv with matplotlib, then runs this)

Log scales: the Node.js baseline is two orders of magnitude above the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
KINDS = [("ours", "this extension"), ("floor", "floor"), ("rust-sdk", "Rust SDK"), ("node", "Node.js")]
COLORS = {"ours": "#1b7f3b", "floor": "#9e9e9e", "rust-sdk": "#d9822b", "node": "#3d6fb6"}


def med(d, *path):
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
        if d is None:
            return None
    return d.get("median") if isinstance(d, dict) else d


def main(results: Path, out: Path) -> None:
    r = json.loads(results.read_text())
    panels = [
        ("exec → first event/next, warm (ms)", lambda k: med(r["startup"], k, "warm", "next_ms")),
        ("exec → first event/next, cold cache (ms)", lambda k: med(r["startup"], k, "cold", "next_ms")),
        ("stripped binary / layer, x86_64 (MiB)", lambda k: r["size"].get(k, {}).get("x86_64_mib")),
        ("peak RSS, 100 invokes × 10 lines (MiB)", lambda k: med(r["rss"], k, "lines_10", "peak_rss_mib")),
        ("CPU, 100 invokes × 10 lines (ms)", lambda k: med(r["cpu"], k, "invokes_100x10", "cpu_ms")),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.6))
    for ax, (title, get) in zip(axes, panels):
        names, values, colors = [], [], []
        for kind, label in KINDS:
            v = get(kind)
            if v is None:
                continue
            names.append(label)
            values.append(v)
            colors.append(COLORS[kind])
        bars = ax.bar(names, values, color=colors)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for b, v in zip(bars, values):
            ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    machine = r.get("machine", {})
    fig.suptitle(f"kinesis-telemetry-extension bench, medians ({machine.get('cpu', 'this machine')}); lower is better",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results.json",
         Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "chart.png")
