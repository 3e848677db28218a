"""Draw results.png from results.json (run with the peers' environment, which has matplotlib).

benchmarks/.peers-venv/main/bin/python benchmarks/peers/chart.py benchmarks/results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PANELS = [
    ("drain_1", "drain, 1 worker process (jobs/s, log)", True),
    ("drain_2", "drain, 2 worker processes (jobs/s, log)", True),
    ("enqueue_one", "enqueue one by one (jobs/s, log)", True),
    ("p99_ms", "enqueue-to-start p99 at 200 jobs/s (ms, log)", True),
    ("rss_mb", "worker peak RSS (MB)", False),
]


def draw(results_dir: Path) -> None:
    doc: dict[str, Any] = json.loads((results_dir / "results.json").read_text())
    summary = doc["summary"]
    systems = list(summary)
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(11, 3.2 * len(PANELS)))
    for ax, (key, title, log) in zip(axes, PANELS, strict=True):
        med, lo, hi, colors = [], [], [], []
        for s in systems:
            f = summary[s]["figures"].get(key)
            m = f["median"] if f else 0.0
            med.append(m)
            lo.append(m - f["min"] if f else 0.0)
            hi.append(f["max"] - m if f else 0.0)
            colors.append("tab:orange" if s.startswith("offload-") else "tab:blue")
        ax.bar(systems, med, yerr=[lo, hi], color=colors, capsize=3)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=35, labelsize=8)
        for i, m in enumerate(med):
            if m == 0:
                ax.text(i, ax.get_ylim()[0], "failed", ha="center", va="bottom", fontsize=7)
    meta = doc["meta"]
    fig.suptitle(
        f"offload (orange) and peers (blue), {meta['date']}, {meta['cpus']} cores, "
        f"load {meta['load_start']}: ratios within one run",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(results_dir / "results.png", dpi=90)


if __name__ == "__main__":
    draw(Path(sys.argv[1]))
