"""Figures from many runs: the summary (median, min, max per system and figure) and the
Markdown table with offload's ratio to each peer on the same backend."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

# (key in a run's result, column title, higher is better)
FIGURES: list[tuple[str, str, bool]] = [
    ("enqueue_one", "enqueue 1-by-1 jobs/s", True),
    ("enqueue_bulk", "enqueue bulk jobs/s", True),
    ("drain_1", "drain 1 proc jobs/s", True),
    ("drain_2", "drain 2 procs jobs/s", True),
    ("p50_ms", "p50 ms", False),
    ("p95_ms", "p95 ms", False),
    ("p99_ms", "p99 ms", False),
    ("rss_mb", "worker RSS MB", False),
]


def backend_of(system: str) -> str:
    return system.rsplit("-", 1)[1]


# Peers whose one-by-one enqueue is a sync call (measured against offload's sync rows);
# the others' is async (against offload's async rows). procrastinate has both (defer and
# defer_async; the peer measures defer_async): both rows.
SYNC_PEERS = ("celery", "dramatiq", "rq", "huey")
BOTH_KINDS = ("procrastinate",)


def same_kind(ours: str, peer: str) -> bool:
    """Whether offload's system ``ours`` is measured the way ``peer`` is (sync or async)."""
    name = peer.split("-", 1)[0]
    if name in BOTH_KINDS:
        return True
    return ours.startswith("offload-sync-") == (name in SYNC_PEERS)


def summarize(systems: Sequence[str], runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per system: each figure's median/min/max over its successful runs, and every failure."""
    out: dict[str, Any] = {}
    for system in systems:
        mine = [r for r in runs if r["system"] == system]
        entry: dict[str, Any] = {
            "config": next((r["config"] for r in mine if r.get("config")), ""),
            "runs": len(mine),
            "failures": [r["error"] for r in mine if r.get("error")],
            "figures": {},
        }
        for key, _, _ in FIGURES:
            values = [float(r[key]) for r in mine if r.get(key) is not None]
            if values:
                entry["figures"][key] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                }
        out[system] = entry
    return out


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _cell(fig: dict[str, float] | None) -> str:
    if fig is None:
        return "—"
    if fig["n"] == 1:
        return _fmt(fig["median"])
    return f"{_fmt(fig['median'])} ({_fmt(fig['min'])}-{_fmt(fig['max'])})"


def figures_table(summary: dict[str, Any]) -> list[str]:
    head = "| system | " + " | ".join(title for _, title, _ in FIGURES) + " |"
    lines = [head, "|" + "---|" * (len(FIGURES) + 1)]
    for system, entry in summary.items():
        cells = [_cell(entry["figures"].get(key)) for key, _, _ in FIGURES]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return lines


def ratio_table(summary: dict[str, Any]) -> list[str]:
    """offload ÷ peer on the same backend, medians: above 1 is better for rates, below 1 is
    better for latency and memory."""
    head = "| peer | offload on | " + " | ".join(title for _, title, _ in FIGURES) + " |"
    lines = [head, "|" + "---|" * (len(FIGURES) + 2)]
    for system, entry in summary.items():
        if system.startswith("offload-"):
            continue
        backend = backend_of(system)
        ours_names = [
            s
            for s in summary
            if s.startswith("offload-") and backend_of(s) == backend and same_kind(s, system)
        ]
        for ours_name in ours_names or [f"offload-{backend}"]:
            ours = summary.get(ours_name)
            cells = []
            for key, _, _ in FIGURES:
                a = ours["figures"].get(key) if ours else None
                b = entry["figures"].get(key)
                ratio = a and b and b["median"]
                cells.append(f"{a['median'] / b['median']:.2f}x" if ratio else "—")
            lines.append(f"| {system} | {ours_name} | " + " | ".join(cells) + " |")
    return lines


def http_section(results: Sequence[dict[str, Any]]) -> list[str]:
    """``offload serve``'s HTTP enqueue (``benchmarks/http_load.py``), when it was run."""
    if not results:
        return []
    out = ["", "## HTTP enqueue (`offload serve`, `POST /v1/jobs`, no worker)", ""]
    out += [
        "| backend | processes | connections | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        procs = r.get("processes", 1)
        if r.get("error"):
            out.append(f"| {r.get('backend')} | {procs} | — | FAILED: {r['error']} | | | |")
            continue
        out.append(
            f"| {r.get('backend')} | {procs} | {r.get('connections')} | {r.get('rps', 0):,} | "
            f"{r.get('p50_ms', '—')} | {r.get('p99_ms', '—')} | {r.get('errors', 0)} |"
        )
    return out


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    out = [
        "# offload and its peers, one run",
        "",
        f"{meta['date']} · {meta.get('machine', '?')} · {meta['cpus']} cores · "
        f"load average at start {meta['load_start']}, "
        f"at end {meta['load_end']} · {meta['runs_done']} run(s) per system, interleaved · "
        f"{meta['jobs']:,} jobs per drain · latency at {meta['latency_rate']:g} jobs/s "
        f"for {meta['latency_seconds']:g} s.",
        "",
        "Figures are medians (min-max over the runs). On a loaded machine read them as ratios "
        "within this one run, not as absolute speeds.",
        "",
        "## Figures",
        "",
        *figures_table(summary),
        "",
        "## offload ÷ peer (same backend, medians)",
        "",
        "Rates (enqueue, drain): above 1x means offload is faster. Latency and RSS: below 1x "
        "means offload is lower (better).",
        "",
        *ratio_table(summary),
        "",
        "## Configuration",
        "",
    ]
    out += [f"- **{s}**: {e['config'] or '(not started)'}" for s, e in summary.items()]
    out += http_section(meta.get("http", []))
    failures = [(s, f) for s, e in summary.items() for f in e["failures"]]
    out += ["", "## Failures", ""]
    out += [f"- **{s}**: {f}" for s, f in failures] or ["None."]
    return "\n".join(out) + "\n"
