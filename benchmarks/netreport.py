"""Tables (network.md) and charts (PNG) from benchmarks/network.py's kept results. Run in
the peers' environment, which has matplotlib (offload's own dependencies do not)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*@*ms.json"))]


def _fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(results: list[dict[str, Any]], delay: float, key: str, digits: int) -> list[str]:
    rows = [r for r in results if r["delay_ms"] == delay]
    counts = sorted({p["processes"] for r in rows for p in r.get("points", [])})
    lines = [
        "| system | " + " | ".join(f"{c} proc" for c in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for r in rows:
        by = {p["processes"]: p.get(key) for p in r.get("points", [])}
        cells = [_fmt(by.get(c), digits) for c in counts]
        err = f" ({r['error']})" if r.get("error") else ""
        lines.append(f"| {r['system']}{err} | " + " | ".join(cells) + " |")
    return lines


def ratios(results: list[dict[str, Any]], delay: float) -> list[str]:
    """offload-redis's drain rate over each Redis peer's, per process count."""
    rows = {r["system"]: r for r in results if r["delay_ms"] == delay}
    ours = {p["processes"]: p["drain"] for p in rows.get("offload-redis", {}).get("points", [])}
    lines = []
    for name, r in rows.items():
        if name.startswith("offload") or not name.endswith("redis"):
            continue
        theirs = {p["processes"]: p["drain"] for p in r.get("points", [])}
        both = sorted(set(ours) & set(theirs))
        cells = ", ".join(f"{c} proc: {ours[c] / theirs[c]:.1f}x" for c in both)
        lines.append(f"- offload-redis / {name}: {cells}")
    return lines


def chart(results: list[dict[str, Any]], delay: float, key: str, label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        if r["delay_ms"] != delay or not r.get("points"):
            continue
        pts = sorted((p["processes"], p[key]) for p in r["points"] if p.get(key) is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=r["system"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("worker processes")
    ax.set_ylabel(label)
    ax.set_title(f"{label}, {delay:g} ms added each way")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    out = Path(sys.argv[1])
    results = load(out)
    proxy = json.loads((out / "proxy.json").read_text()) if (out / "proxy.json").exists() else {}
    lines = ["# Worker processes across a network delay", ""]
    if proxy:
        lines += [
            f"The proxy's own cost: a Redis PING round trip takes {proxy['direct_ms']:.3f} ms on"
            f" loopback and {proxy['proxy_0_ms']:.3f} ms through the proxy at 0 ms (median of"
            " 200, from inside a namespace).",
            "",
        ]
    for delay in sorted({r["delay_ms"] for r in results}):
        some = next(r for r in results if r["delay_ms"] == delay)
        jobs = some.get("jobs")
        lines += [
            f"## {delay:g} ms each way (measured PING round trip {some['rtt_ms']:.2f} ms)",
            "",
            f"Drain, jobs/s ({jobs:,} no-op jobs per worker process,"
            f" {some.get('concurrency', 8)} slots each):",
            "",
            *table(results, delay, "drain", 0),
            "",
            "Enqueue-to-start latency, p50, ms (100 jobs/s for 3 s, producer on loopback):",
            "",
            *table(results, delay, "p50_ms", 1),
            "",
            "The same, p95, ms:",
            "",
            *table(results, delay, "p95_ms", 1),
            "",
            "Drain ratio:",
            "",
            *ratios(results, delay),
            "",
        ]
        for key, label in (("drain", "drain, jobs per second"), ("p50_ms", "latency p50, ms")):
            name = f"network-{key.split('_')[0]}-{delay:g}ms.png"
            chart(results, delay, key, label, out / name)
            lines += [f"![{label} at {delay:g} ms]({name})", ""]
    (out / "network.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
