"""depth.md, depth.json and depth.png from benchmarks/depth.py's runs."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHART_PYTHON = HERE / ".peers-venv" / "main" / "bin" / "python"  # compare.py's, has matplotlib


def machine_meta() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for ln in f:
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs ({model}), {platform.system()}"
        f" {platform.release()}",
    }


def _mb(x: float | None) -> str:
    return "—" if x is None else f"{x / 1e6:,.1f}"


def _load(row: dict[str, Any]) -> str:
    return f"{row['load_before'][0]:.1f}/{row['load_after'][0]:.1f}"


def _ratio(row: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    if base is None or not base.get(key):
        return "—"
    return f"{row[key] / base[key]:.0%}"


def line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['backend']:9} {row['jobs']:>9,}  FAILED: {row['error'][-300:]}"
    return (
        f"{row['backend']:9} {row['jobs']:>9,}  enqueue {row['enqueue_per_s']:8,.0f}/s"
        f"  drain {row['drain_per_s']:8,.0f}/s  claim p50 {row['claim_p50_ms']:.2f} ms"
        f" p99 {row['claim_p99_ms']:.2f} ms  cpu/job worker {row['worker_cpu_ms_per_job']:.3f}"
        f" server {row['server_cpu_ms_per_job']:.3f} ms  load {_load(row)}"
    )


def _size(kind: str, fp: dict[str, Any]) -> str:
    if kind == "sqlite":
        return _mb(fp["file_bytes"])
    if kind == "postgres":
        return f"{_mb(fp['total_bytes'])} ({_mb(fp['index_bytes'])} idx, {fp['dead_tup']:,} dead)"
    return f"{_mb(fp['key_bytes'])} / {_mb(fp['used_memory'])} ({fp['keys']:,} keys)"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = [
        "# Drain at depth (benchmarks/depth.py)",
        "",
        f"{meta['date']}; {meta['machine']}. The machine is shared with other work: load is"
        " the 1-minute load average before/after each run; read the ratios within one backend,"
        " measured minutes apart, not the absolute rates.",
        "",
        "Bulk enqueue in batches of 5,000; one worker process, concurrency 200, sync no-op"
        " task. Claim latency: a claim loop in the benchmark process on the full queue, before"
        " the drain (200 claims of 25 jobs, each batch completed before the next claim).",
        "",
        "CPU per job (ms): the worker process's CPU time over the drain, and the server's (the"
        " PostgreSQL backends of the run's connections; the whole Redis server, other users"
        " included), divided by the jobs: steadier than rates when other work shares the"
        " machine.",
        "",
        "| backend | jobs | enqueue/s | drain/s | drain vs 20k | enqueue vs 20k |"
        " claim p50 ms | p99 ms | p99 vs 20k | worker CPU/job | server CPU/job | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    bases: dict[str, dict[str, Any]] = {}
    for r in rows:
        if "error" in r:
            out.append(f"| {r['backend']} | {r['jobs']:,} | failed | | | | | | | | | |")
            continue
        base = bases.setdefault(r["backend"], r)
        out.append(
            f"| {r['backend']} | {r['jobs']:,} | {r['enqueue_per_s']:,.0f} |"
            f" {r['drain_per_s']:,.0f} | {_ratio(r, base, 'drain_per_s')} |"
            f" {_ratio(r, base, 'enqueue_per_s')} | {r['claim_p50_ms']:.2f} |"
            f" {r['claim_p99_ms']:.2f} | {_ratio(r, base, 'claim_p99_ms')} |"
            f" {r['worker_cpu_ms_per_job']:.3f} ({_ratio(r, base, 'worker_cpu_ms_per_job')}) |"
            f" {r['server_cpu_ms_per_job']:.3f} ({_ratio(r, base, 'server_cpu_ms_per_job')}) |"
            f" {_load(r)} |"
        )
    out += [
        "",
        "Footprint, MB: SQLite the file + WAL; PostgreSQL pg_total_relation_size of the jobs"
        " table (its indexes; dead tuples from pg_stat_user_tables); Redis (and RabbitMQ's"
        " Redis store) the run's keys (sum of MEMORY USAGE) / the whole server's used_memory,"
        " which other users share. After retention: retention=1s, run_maintenance() until it"
        " deletes nothing (no manual VACUUM).",
        "",
        "| backend | jobs | start | enqueued | drained | after retention | pruned (s) |",
        "|---|---:|---|---|---|---|---:|",
    ]
    for r in rows:
        if "error" in r:
            continue
        k = r["backend"]
        out.append(
            f"| {k} | {r['jobs']:,} | {_size(k, r['fp_start'])} | {_size(k, r['fp_enqueued'])}"
            f" | {_size(k, r['fp_drained'])} | {_size(k, r['fp_pruned'])} |"
            f" {r['pruned']:,} ({r['prune_s']:.1f}) |"
        )
    out += ["", "![drain at depth](depth.png)", ""]
    return "\n".join(out)


def write(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any], chart: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "depth.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "depth.md").write_text(markdown(rows, meta))
    if chart.exists():
        subprocess.run([str(chart), str(HERE / "depth_chart.py"), str(out)], check=False)
    else:
        print(f"no chart: {chart} (a Python with matplotlib) is missing; see --chart-python")
