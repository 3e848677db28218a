"""Workflows: N chains of S no-op steps per backend, beside S*N plain no-op jobs.

    python benchmarks/workflows.py [--chains 1000] [--steps 10] [--backends sqlite,redis]

For each backend (memory, sqlite, postgres, redis by default), on storage of its own (a
temporary SQLite file, a fresh PostgreSQL schema or Redis key prefix, removed afterwards):
enqueue the chains (one ``aenqueue`` each) and drain them with one in-process worker
(concurrency 50); then the same number of plain jobs, enqueued one by one and drained the
same way. Prints steps/s for both and their ratio: what advancing a workflow
atomically with each step's outcome costs over a plain completion. Drain rates come from the
backend's records (first started_at to last finished_at), so start-up is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import offload  # noqa: E402
from offload.job import JobFilter, JobState  # noqa: E402
from offload.worker.worker import Worker, WorkerConfig  # noqa: E402

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def make_app(url: str) -> offload.App:
    app = offload.App(url)

    @app.task(name="bench.step", queue="wf")
    def step(prev: int) -> int:
        return prev + 1

    @app.task(name="bench.plain", queue="plain")
    def plain(prev: int) -> int:
        return prev + 1

    return app


async def drain(app: offload.App, queue: str, n: int, timeout_s: float) -> float:
    """Run a worker until ``n`` jobs of ``queue`` succeeded; steps/s from the records."""
    worker = Worker(app, WorkerConfig(queues=(queue,), concurrency=50, poll_s=0.05))
    running = asyncio.create_task(worker.run())
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            counts = await app.call(lambda b: b.counts())
            if counts.get(queue, {}).get(JobState.SUCCEEDED, 0) >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue}: not drained within {timeout_s}s")
            await asyncio.sleep(0.1)  # a benchmark's progress check, not a test
    finally:
        await worker.stop()
        await running
    first, last, cursor = float("inf"), 0.0, None
    while True:
        flt = JobFilter(queue=queue, limit=1000, cursor=cursor)
        page = await app.call(lambda b, f=flt: b.list_jobs(f))  # type: ignore[misc]
        for j in page.jobs:
            first = min(first, j.started_at or first)
            last = max(last, j.finished_at or last)
        cursor = page.next_cursor
        if cursor is None:
            return n / max(last - first, 1e-9)


async def one_backend(url: str, chains: int, steps: int, timeout_s: float) -> dict[str, float]:
    app = make_app(url)
    step, plain = app.tasks["bench.step"], app.tasks["bench.plain"]
    async with app:
        t0 = time.perf_counter()
        for _ in range(chains):
            await offload.chain(step.s(0), *(step.s() for _ in range(steps - 1))).aenqueue()
        enq_wf = chains / (time.perf_counter() - t0)
        wf_rate = await drain(app, "wf", chains * steps, timeout_s)
        t0 = time.perf_counter()
        for i in range(chains * steps):
            await plain.aenqueue(i)
        enq_plain = chains * steps / (time.perf_counter() - t0)
        plain_rate = await drain(app, "plain", chains * steps, timeout_s)
    return {
        "workflows enqueued/s": enq_wf,
        "workflow steps/s": wf_rate,
        "plain jobs enqueued/s": enq_plain,
        "plain jobs/s": plain_rate,
        "ratio": wf_rate / plain_rate,
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--chains", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--backends", default="memory,sqlite,postgres,redis")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    print(f"{args.chains} chains of {args.steps} no-op steps; one worker, concurrency 50")
    print("| backend | workflows enqueued/s | workflow steps/s | plain jobs/s | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for kind in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            schema = f"bench_wf_{uuid.uuid4().hex[:8]}"
            url = {
                "memory": "memory://",
                "sqlite": f"sqlite:///{tmp}/wf.db",
                "postgres": f"{POSTGRES}?schema={schema}",
                "redis": f"{REDIS}?prefix={schema}",
            }[kind]
            if kind == "postgres":
                await offload.App(url).backend.migrate()  # type: ignore[attr-defined]
            try:
                r = await one_backend(url, args.chains, args.steps, args.timeout)
            finally:
                if kind == "postgres":
                    await _drop(schema)
                if kind == "redis":
                    await _forget(schema)
        print(
            f"| {kind} | {r['workflows enqueued/s']:,.0f} | {r['workflow steps/s']:,.0f} | "
            f"{r['plain jobs/s']:,.0f} | {r['ratio']:.2f} |"
        )


async def _drop(schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())


async def _forget(prefix: str) -> None:
    """Delete this run's keys (its own prefix), never anything else."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS)
    async for key in client.scan_iter(match="{" + prefix + "*", count=1000):
        await client.delete(key)
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
