"""Drain speed at depth: 20,000, 200,000 and 1,000,000 waiting jobs on each backend.

    python benchmarks/depth.py [--backends sqlite,redis,postgres,rabbitmq]
                               [--sizes 20000,200000,1000000] [--out benchmarks/results/depth]

For each backend and size, in a fresh namespace (its own SQLite file, PostgreSQL schema, Redis
key prefix, RabbitMQ queue prefix with a Redis store under its own prefix), removed afterwards:

1. the footprint at start (Redis: the server's used_memory and the prefix's keys; PostgreSQL:
   pg_total_relation_size of the jobs table with its indexes; SQLite: the file and its WAL);
2. bulk enqueue in batches of 5,000 (drain.py's enqueue_all): enqueue jobs/s; footprint;
3. claim latency at depth, from a claim loop in this process on the full queue (--claims
   claims of --claim-limit jobs each, every batch completed before the next claim): p50/p99 of
   the claim call's round trip;
4. the drain by one worker process at concurrency 200, sync no-op task (drain.py's worker);
   jobs/s from the backend's records of the jobs that worker ran; footprint;
5. a retention pass: this process's URL carries retention=1s (the worker's keeps the default,
   so that its maintenance leaves the records alone); after 1.5 s, run_maintenance() is
   called until it deletes nothing; footprint.

Each (backend, size) runs in a child process (an App's URL is fixed once used). The load
average is noted before and after each run. Writes depth.md, depth.json and depth.png (the
chart needs matplotlib: --chart-python, by default the peers' environment of compare.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import depth_report  # noqa: E402
from benchmarks.bench_app import app, noop  # noqa: E402
from benchmarks.drain import (  # noqa: E402
    enqueue_all,
    measured_rate,
    start_worker,
    stop_worker,
)
from offload.job import ClaimRequest, JobState, Lease  # noqa: E402
from offload.outcome import Succeeded  # noqa: E402

# A database of its own: the test suites SCAN db 0 to clean up, and a million keys of ours
# there made every one of their SCANs walk them, on the server the drain is measured on.
REDIS = "redis://127.0.0.1:6379/14"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
BACKENDS = ("sqlite", "redis", "postgres", "rabbitmq")


def delete_redis_prefix(prefix: str) -> None:
    """UNLINK the run's keys ("{prefix:queue}..." and "{prefix}...") in REDIS's database."""
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        for pattern in ("{" + prefix + ":*", "{" + prefix + "}*"):
            batch = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(batch), 1000):
                client.unlink(*batch[i : i + 1000])
    finally:
        client.close()


@contextlib.contextmanager
def namespace(kind: str, run: str) -> Iterator[tuple[str, str, str]]:
    """``(url, worker_url, ident)`` of a fresh namespace for one run; its data is removed
    afterwards. ``url`` (this process: enqueue, claim loop, retention pass) keeps finished jobs
    1 s; ``worker_url`` keeps the default retention, so the worker's own maintenance does not
    delete the records the drain rate is read from. ``ident`` names what the footprint
    measures (file, schema or key prefix)."""
    from tests.services import delete_rabbitmq_prefix, drop_postgres_schema

    if kind == "sqlite":
        path = f"/tmp/offload_{run}.db"
        try:
            yield f"sqlite:///{path}?retention=1s", f"sqlite:///{path}", path
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(path + suffix).unlink(missing_ok=True)
    elif kind == "redis":
        try:
            yield f"{REDIS}?prefix={run}&retention=1s", f"{REDIS}?prefix={run}", run
        finally:
            delete_redis_prefix(run)
    elif kind == "postgres":
        url = f"{POSTGRES}?schema={run}&auto_migrate=1"
        try:
            yield f"{url}&retention=1s", url, run
        finally:
            drop_postgres_schema(run)
    elif kind == "rabbitmq":
        store = quote(f"{REDIS}?prefix={run}", safe="")
        short = quote(f"{REDIS}?prefix={run}&retention=1s", safe="")
        try:
            yield (
                f"{RABBITMQ}?prefix={run}&store={short}",
                f"{RABBITMQ}?prefix={run}&store={store}",
                run,
            )
        finally:
            delete_rabbitmq_prefix(run)
            delete_redis_prefix(run)
    else:
        raise SystemExit(f"unknown backend {kind!r}; choose from {', '.join(BACKENDS)}")


def file_bytes(path: str) -> int:
    """A SQLite file with its WAL."""
    return sum(p.stat().st_size for p in (Path(path), Path(path + "-wal")) if p.exists())


async def footprint(kind: str, ident: str) -> dict[str, Any]:
    """What the namespace occupies now (see the module docstring)."""
    if kind == "sqlite":
        return {"file_bytes": file_bytes(ident)}
    if kind in ("redis", "rabbitmq"):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS)
        try:
            info = await client.info("memory")
            keys = [k async for k in client.scan_iter(match="{" + ident + "*", count=5000)]
            total = 0
            for i in range(0, len(keys), 2000):
                pipe = client.pipeline(transaction=False)
                for k in keys[i : i + 2000]:
                    pipe.memory_usage(k)
                total += sum(int(x or 0) for x in await pipe.execute())
            return {"used_memory": info["used_memory"], "keys": len(keys), "key_bytes": total}
        finally:
            await client.aclose()
    import psycopg

    async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid),"
            " pg_indexes_size(c.oid), s.n_live_tup, s.n_dead_tup, s.autovacuum_count"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE n.nspname = %s AND c.relname = 'jobs'",
            [ident],
        )
        row = await cur.fetchone()
    assert row is not None
    names = ("total_bytes", "heap_bytes", "index_bytes", "live_tup", "dead_tup", "autovacuums")
    return dict(zip(names, row, strict=True))


def sqlite_unfinished(path: str, queue: str) -> bool:
    import sqlite3

    sql = "SELECT EXISTS (SELECT 1 FROM offload_jobs WHERE state IN ('scheduled', 'queued')"
    sql += " AND queue = ?) OR EXISTS (SELECT 1 FROM offload_jobs WHERE state = 'running'"
    sql += " AND queue = ?)"
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        return bool(db.execute(sql, [queue, queue]).fetchone()[0])


async def unfinished(kind: str, ident: str, queue: str) -> bool:
    """Whether ``queue`` still has waiting or running jobs, asked cheaply: counts() is a scan
    of the whole table on SQLite and PostgreSQL, and polling it at depth steals the CPU the
    drain is measured on (drain.py's wait_drained; Redis answers counts() from ZCARDs)."""
    # each EXISTS matches one partial index's predicate (waiting: the claim index; running)
    waiting = "state IN ('scheduled', 'queued') AND queue = %s"
    running = "state = 'running' AND queue = %s"
    if kind == "sqlite":
        return await asyncio.to_thread(sqlite_unfinished, ident, queue)
    if kind == "postgres":
        import psycopg

        sql = f"SELECT EXISTS (SELECT 1 FROM {ident}.jobs WHERE {waiting})"
        sql += f" OR EXISTS (SELECT 1 FROM {ident}.jobs WHERE {running})"
        async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as conn:
            cur = await conn.execute(sql.encode(), [queue, queue])
            row = await cur.fetchone()
        return bool(row and row[0])
    counts = await app.call(lambda b: b.counts())
    busy = (JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING)
    return any(counts.get(queue, {}).get(st, 0) for st in busy)


async def wait_drained(kind: str, ident: str, queue: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await unfinished(kind, ident, queue):
        if time.monotonic() > deadline:
            raise TimeoutError(f"drain did not finish within {timeout_s}s")
        await asyncio.sleep(1.0)


async def redis_commands() -> dict[str, tuple[int, int]]:
    """The Redis server's (calls, usec) per command, scripts' inner commands included (the
    whole server's: other users' commands count too)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()}


def command_costs(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, dict[str, float]]:
    """The 8 commands that took the most server time between two snapshots."""
    diff = {
        k: (c - before.get(k, (0, 0))[0], u - before.get(k, (0, 0))[1])
        for k, (c, u) in after.items()
    }
    top = sorted(diff.items(), key=lambda kv: kv[1][1], reverse=True)[:8]
    return {k: {"calls": c, "usec": u, "usec_per_call": u / max(c, 1)} for k, (c, u) in top}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """A process and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


async def server_pids(kind: str, ident: str) -> list[int]:
    """The server processes that work for this run: PostgreSQL backends of its schema's
    connections (named offload:<schema>); the Redis server (shared with other users)."""
    if kind == "postgres":
        import psycopg

        async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [f"offload:{ident}"]
            )
            return [int(r[0]) for r in await cur.fetchall()]
    if kind in ("redis", "rabbitmq"):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS)
        try:
            pids = [int((await client.info("server"))["process_id"])]
        finally:
            await client.aclose()
        return pids
    return []


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def claim_latency(queue: str, claims: int, limit: int) -> list[float]:
    """Round trips (ms) of ``claims`` claims of ``limit`` jobs each on the deep queue; each
    batch is completed (succeeded) before the next claim, off the clock."""
    times: list[float] = []
    req = ClaimRequest(queues=(queue,), limit=limit, worker_id=f"depth-{uuid.uuid4().hex[:6]}")
    for _ in range(claims):
        t0 = time.perf_counter()
        jobs = await app.call(lambda b: b.claim(req))
        times.append((time.perf_counter() - t0) * 1000)
        done = [(Lease(j.id, req.worker_id, j.attempt), Succeeded()) for j in jobs]
        await app.call(lambda b, d=done: b.complete(d))  # type: ignore[misc]
    return times


async def prune() -> tuple[int, float]:
    """run_maintenance() until it deletes nothing: (deleted, seconds)."""
    await asyncio.sleep(1.5)  # past retention=1s
    t0, deleted = time.perf_counter(), 0
    while n := await app.call(lambda b: b.run_maintenance()):
        deleted += n
    return deleted, time.perf_counter() - t0


async def one_run(
    kind: str, url: str, worker_url: str, ident: str, n: int, args: argparse.Namespace
) -> None:
    """One (backend, size) run in this process; prints its figures as one JSON line."""
    app.use_url(url)
    queue = f"depth_{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {"backend": kind, "jobs": n, "load_before": os.getloadavg()}
    await app.open()
    out["fp_start"] = await footprint(kind, ident)
    out["enqueue_per_s"] = await enqueue_all(n, noop.name, queue, args.batch)
    out["fp_enqueued"] = await footprint(kind, ident)
    lat = await claim_latency(queue, args.claims, args.claim_limit)
    out["claim_p50_ms"], out["claim_p99_ms"] = quantile(lat, 0.5), quantile(lat, 0.99)
    since = time.time()
    stats = await redis_commands() if kind in ("redis", "rabbitmq") else {}
    # The worker starts on the paused queue, so its start-up is left out of its CPU time.
    await app.call(lambda b: b.set_paused(queue, True))
    worker = await start_worker(worker_url, queue, args.concurrency)
    try:
        await asyncio.sleep(args.worker_start_s)
        servers = {p: cpu_s(p) for p in await server_pids(kind, ident)}
        started = sum(cpu_s(p) for p in tree(worker.pid))
        t0 = time.perf_counter()
        await app.call(lambda b: b.set_paused(queue, False))
        await wait_drained(kind, ident, queue, args.timeout)
        # CPU per job: far steadier than rates on a machine other work shares
        worker_s = sum(cpu_s(p) for p in tree(worker.pid)) - started
        out["worker_cpu_ms_per_job"] = worker_s * 1000 / n
        for p in await server_pids(kind, ident):
            servers.setdefault(p, 0.0)
        out["server_cpu_ms_per_job"] = sum(cpu_s(p) - c for p, c in servers.items()) * 1000 / n
    finally:
        await stop_worker(worker)
    out["drain_wall_s"] = time.perf_counter() - t0
    if stats:
        out["redis_commands"] = command_costs(stats, await redis_commands())
    out["drain_per_s"], out["drained"] = await measured_rate(queue, since)
    out["fp_drained"] = await footprint(kind, ident)
    out["pruned"], out["prune_s"] = await prune()
    out["fp_pruned"] = await footprint(kind, ident)
    counts = await app.call(lambda b: b.counts())
    out["left"] = sum(counts.get(queue, {}).values())
    out["load_after"] = os.getloadavg()
    await app.close()
    print(json.dumps(out), flush=True)


def run_child(kind: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    run = f"depth_{uuid.uuid4().hex[:10]}"
    with namespace(kind, run) as (url, worker_url, ident):
        cmd = [sys.executable, __file__, "--one", kind, "--url", url, "--ident", ident]
        cmd += ["--worker-url", worker_url]
        cmd += ["--jobs", str(n), "--claims", str(args.claims)]
        cmd += ["--claim-limit", str(args.claim_limit), "--timeout", str(args.timeout)]
        cmd += ["--batch", str(args.batch), "--concurrency", str(args.concurrency)]
        cmd += ["--worker-start-s", str(args.worker_start_s)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout + 900
            )
        except subprocess.TimeoutExpired:
            return {"backend": kind, "jobs": n, "error": "the run did not finish in time"}
        if proc.returncode != 0:
            return {"backend": kind, "jobs": n, "error": proc.stderr.strip()[-2000:]}
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--sizes", default="20000,200000,1000000")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "depth")
    p.add_argument("--batch", type=int, default=5_000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--claims", type=int, default=200, help="claims in the latency loop")
    p.add_argument("--claim-limit", type=int, default=25, help="jobs per latency claim")
    p.add_argument("--timeout", type=float, default=1800, help="seconds for one drain")
    p.add_argument("--worker-start-s", type=float, default=5.0, help="worker start-up time")
    p.add_argument("--retries", type=int, default=1, help="runs again after a failed run")
    p.add_argument("--chart-python", type=Path, default=depth_report.CHART_PYTHON)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--worker-url", help=argparse.SUPPRESS)
    p.add_argument("--ident", help=argparse.SUPPRESS)
    p.add_argument("--jobs", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        asyncio.run(one_run(args.one, args.url, args.worker_url, args.ident, args.jobs, args))
        return
    meta = depth_report.machine_meta()
    rows: list[dict[str, Any]] = []
    for kind in args.backends.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            row = run_child(kind, n, args)
            for _ in range(args.retries):
                if "error" not in row:
                    break
                print(depth_report.line(row), "(run again)", flush=True)
                row = run_child(kind, n, args)
            rows.append(row)
            print(depth_report.line(row), flush=True)
            depth_report.write(args.out, rows, meta, args.chart_python)
    print((args.out / "depth.md").read_text())


if __name__ == "__main__":
    main()
