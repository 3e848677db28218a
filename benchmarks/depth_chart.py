"""Draw depth.png from depth.json (run with a Python that has matplotlib; depth.py calls it).

benchmarks/.peers-venv/main/bin/python benchmarks/depth_chart.py benchmarks/results/depth
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
    ("drain_per_s", "drain, jobs/s"),
    ("enqueue_per_s", "bulk enqueue, jobs/s"),
    ("claim_p99_ms", "claim p99, ms"),
]


def draw(results_dir: Path) -> None:
    doc: dict[str, Any] = json.loads((results_dir / "depth.json").read_text())
    rows = [r for r in doc["rows"] if "error" not in r]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        for b in backends:
            mine = [r for r in rows if r["backend"] == b]
            ax.plot([r["jobs"] for r in mine], [r[key] for r in mine], marker="o", label=b)
        ax.set_xscale("log")
        ax.set_xlabel("waiting jobs at the start")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    meta = doc["meta"]
    fig.suptitle(f"drain at depth, {meta['date']}, {meta['machine']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(results_dir / "depth.png", dpi=90)


if __name__ == "__main__":
    draw(Path(sys.argv[1]))
