"""offload and its peers on the same local services, side by side, in one run.

    .venv/bin/python benchmarks/compare.py            # full: 20,000 jobs, 3 runs each
    .venv/bin/python benchmarks/compare.py --quick    # 2,000 jobs, 1 run each (~2-3 minutes)

Installs the peers from PyPI (pinned in benchmarks/peers/requirements*.txt) into
benchmarks/.peers-venv/, then runs benchmarks/peers/driver.py once per system per round, the
systems interleaved (the order rotates every round), each run under a time limit. Writes
results.md, results.json and results.png to benchmarks/results/. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peers import report  # noqa: E402

VENVS = HERE / ".peers-venv"
# environment group -> requirements file (None: offload's own interpreter)
GROUPS: dict[str, Path | None] = {
    "offload": None,
    "main": HERE / "peers" / "requirements.txt",
    "redis5": HERE / "peers" / "requirements-redis5.txt",
}
# system name (ends with its backend) -> (module under benchmarks/peers, environment group)
SYSTEMS: dict[str, tuple[str, str]] = {
    "offload-redis": ("offload_peer", "offload"),
    "celery-redis": ("celery_peer", "main"),
    "dramatiq-redis": ("dramatiq_peer", "main"),
    "rq-redis": ("rq_peer", "main"),
    "arq-redis": ("arq_peer", "redis5"),
    "huey-redis": ("huey_peer", "main"),
    "saq-redis": ("saq_peer", "redis5"),
    "taskiq-redis": ("taskiq_peer", "main"),
    "offload-postgres": ("offload_peer", "offload"),
    "procrastinate-postgres": ("procrastinate_peer", "main"),
    "offload-rabbitmq": ("offload_peer", "offload"),
    "offload-storeless-rabbitmq": ("offload_peer", "offload"),
    "celery-rabbitmq": ("celery_peer", "main"),
    "offload-beanstalkd": ("offload_peer", "offload"),
    "offload-storeless-beanstalkd": ("offload_peer", "offload"),
    "offload-sqlite": ("offload_peer", "offload"),
    # a sync task and task.enqueue() from sync code: what the sync peers measure
    "offload-sync-redis": ("offload_peer", "offload"),
    "offload-sync-postgres": ("offload_peer", "offload"),
    "offload-sync-rabbitmq": ("offload_peer", "offload"),
    "offload-sync-storeless-rabbitmq": ("offload_peer", "offload"),
    "offload-sync-beanstalkd": ("offload_peer", "offload"),
    "offload-sync-sqlite": ("offload_peer", "offload"),
    "offload-sync-normal-sqlite": ("offload_peer", "offload"),
}


def machine() -> str:
    """The machine the figures come from: CPU model, kernel, Python."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model} · {platform.system()} {platform.release()} · Python {platform.python_version()}"
    )


def python_of(group: str) -> Path:
    return Path(sys.executable) if GROUPS[group] is None else VENVS / group / "bin" / "python"


def ensure_venv(group: str) -> None:
    """Create or update one peers' environment when its requirements file changed."""
    reqs = GROUPS[group]
    if reqs is None:
        return
    venv, stamp = VENVS / group, VENVS / group / ".requirements-sha256"
    digest = hashlib.sha256(reqs.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing the peers' {group!r} environment into {venv} ...", flush=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(reqs)], check=True)
    stamp.write_text(digest)


def offload_missing(system: str) -> str | None:
    """Why an offload backend cannot run yet, or None."""
    from offload.backends import from_url
    from offload.errors import OffloadError

    kind = system.removeprefix("offload-").removeprefix("sync-").removeprefix("normal-")
    probe = {
        "sqlite": "sqlite:///x.db",
        "redis": "redis://127.0.0.1:6379/13",
        "postgres": "postgresql://postgres@127.0.0.1:5432/test",
        "rabbitmq": "amqp://guest:guest@127.0.0.1//?store=sqlite:///x.db",
        "storeless-rabbitmq": "amqp://guest:guest@127.0.0.1//",
        "beanstalkd": "beanstalk://127.0.0.1:11300/?store=sqlite:///x.db",
        "storeless-beanstalkd": "beanstalk://127.0.0.1:11300/",
    }[kind]
    try:
        from_url(probe)
    except OffloadError as exc:
        return f"not available yet ({exc})"
    return None


def run_one(system: str, args: argparse.Namespace) -> dict[str, Any]:
    """One driver run under a time limit; a failure is a result with its reason."""
    module, group = SYSTEMS[system]
    if group == "offload" and (why := offload_missing(system)):
        return {"system": system, "error": why}
    cmd = [
        str(python_of(group)), str(HERE / "peers" / "driver.py"),
        "--system", system, "--module", module, "--jobs", str(args.jobs),
        "--latency-rate", str(args.latency_rate), "--latency-seconds", str(args.latency_seconds),
        "--phase-timeout", str(args.phase_timeout),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the driver stops its workers and cleans up
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return {"system": system, "error": f"run exceeded its {args.run_timeout:g} s limit"}
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-4:])
        return {"system": system, "error": f"driver exited {proc.returncode}: {tail}"}
    return result


def http_enqueue(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    """``offload serve --processes N`` on Redis, ``POST /v1/jobs`` over 16 keep-alive
    connections (no worker): requests/s and latency percentiles from ``http_load.py``, under a
    key prefix of its own that is deleted afterwards."""
    import redis

    prefix = f"bench_http_{os.getpid()}_{processes}"
    url = f"redis://127.0.0.1:6379/13?prefix={prefix}"
    cmd = [
        sys.executable, str(HERE / "http_load.py"), "--url", url, "--enqueue-only",
        "--connections", str(args.http_connections), "--duration", str(args.http_seconds),
        "--processes", str(processes),
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = done.stdout.strip().splitlines()
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": done.stderr[-300:]}
    except (subprocess.TimeoutExpired, ValueError) as exc:
        result = {"error": repr(exc)}
    finally:
        with redis.Redis(db=13) as r:  # only this run's keys: the prefix is its own
            keys = list(r.scan_iter(match="{" + prefix + "*", count=1000))
            for start in range(0, len(keys), 1000):
                r.delete(*keys[start : start + 1000])
    return {"backend": "redis", "processes": processes, **result}


def describe(result: dict[str, Any]) -> str:
    if result.get("error"):
        return f"FAILED: {result['error']}"
    keys = ("enqueue_one", "enqueue_bulk", "drain_1", "drain_2", "p99_ms", "rss_mb")
    return "  ".join(f"{k}={result[k]:,.1f}" for k in keys if result.get(k) is not None)


def write_results(
    out: Path, systems: list[str], runs: list[dict[str, Any]], meta: dict[str, Any]
) -> None:
    """results.json, results.md and results.png from the runs so far."""
    meta = {**meta, "runs_done": 1 + max(r["round"] for r in runs)}
    meta["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = report.summarize(systems, runs)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "summary": summary, "runs": runs}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "results.md").write_text(report.markdown(summary, meta))
    chart = [str(python_of("main")), str(HERE / "peers" / "chart.py"), str(out)]
    subprocess.run(chart, cwd=ROOT, check=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 jobs, 3 s latency, 1 run each")
    p.add_argument("--runs", type=int, help="runs per system (default 3; 1 with --quick)")
    p.add_argument("--jobs", type=int, help="jobs per enqueue/drain (default 20,000)")
    p.add_argument("--latency-rate", type=float, default=200.0)
    p.add_argument("--latency-seconds", type=float, help="default 10 (3 with --quick)")
    p.add_argument("--phase-timeout", type=float, help="default 300 s (30 s with --quick)")
    p.add_argument("--run-timeout", type=float, help="default 1200 s (180 s with --quick)")
    p.add_argument("--only", help="comma-separated system names (default: all)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--http-seconds", type=float, help="HTTP enqueue load (default 10; 3 quick)")
    p.add_argument("--http-connections", type=int, default=16)
    p.add_argument("--no-http", action="store_true", help="skip the HTTP enqueue figure")
    p.add_argument(
        "--http-processes",
        default="1,2",
        help="the HTTP enqueue figure once per `offload serve --processes` count (default 1,2)",
    )
    args = p.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.jobs = args.jobs or (2_000 if args.quick else 20_000)
    args.latency_seconds = args.latency_seconds or (3.0 if args.quick else 10.0)
    args.phase_timeout = args.phase_timeout or (30.0 if args.quick else 300.0)
    args.run_timeout = args.run_timeout or (180.0 if args.quick else 1200.0)
    args.http_seconds = args.http_seconds or (3.0 if args.quick else 10.0)
    systems = args.only.split(",") if args.only else list(SYSTEMS)
    for group in sorted({"main", *(SYSTEMS[s][1] for s in systems)}):  # main draws the chart
        ensure_venv(group)
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "machine": machine(),
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "runs": args.runs,
        "jobs": args.jobs,
        "latency_rate": args.latency_rate,
        "latency_seconds": args.latency_seconds,
    }
    runs: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for round_no in range(args.runs):
        shift = round_no % len(systems)
        for system in systems[shift:] + systems[:shift]:
            result = run_one(system, args)
            result["round"] = round_no
            runs.append(result)
            print(f"[{time.monotonic() - t0:6.0f}s] {system:24} {describe(result)}", flush=True)
        # written after every round, so that a run cut short still leaves its figures
        write_results(args.out, systems, runs, meta)
    if not args.no_http:
        meta["http"] = []
        for n in (int(x) for x in args.http_processes.split(",")):
            meta["http"].append(http_enqueue(args, n))
            print(f"[{time.monotonic() - t0:6.0f}s] http enqueue            {meta['http'][-1]}")
        write_results(args.out, systems, runs, meta)
    print(f"\nwrote {args.out}/results.md, results.json, results.png\n")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
