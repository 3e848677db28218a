"""Enqueue-to-start latency split in two: the enqueue call itself, and what follows it.

compare.py's latency figure runs from just before the enqueue call to the task's start, so it
holds the call (a durable commit on SQLite and PostgreSQL, a script on Redis) and then the
worker's part (the wake-up, the claim, the hand-over to the task). This runs the same load
(one worker process at its defaults, jobs evenly paced, default 200/s) and reports both parts
and the whole, per backend and task kind::

    python benchmarks/latency_parts.py [--backends sqlite,postgres,redis,storeless-rabbitmq]
                                       [--rate 200]
                                       [--seconds 10] [--kinds async,sync]

``async``: an async task enqueued with ``await task.aenqueue()``; ``sync``: a sync task (run in
the worker's threads) enqueued with ``task.enqueue()`` from a thread, as compare.py's
``offload-sync-*`` rows. The first second of jobs is a warm-up and is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import offload  # noqa: E402

app = offload.App("memory://")
OUT_DIR = "OFFLOAD_LATENCY_PARTS_DIR"  # where the worker writes each job's start


_OUT: list[TextIO] = []  # the worker process's file of starts, opened by its first job


def _started(i: int) -> None:
    now = time.time()
    if not _OUT:
        _OUT.append(open(Path(os.environ[OUT_DIR]) / f"{os.getpid()}.txt", "a", buffering=1))
    _OUT[0].write(f"{i} {now}\n")


@app.task(name="alat")
async def alat(i: int) -> None:
    _started(i)


@app.task(name="slat")
def slat(i: int) -> None:
    _started(i)


URLS = {
    "sqlite": "sqlite:///{dir}/latency.db",
    "sqlite-normal": "sqlite:///{dir}/latency.db?synchronous=normal",
    "postgres": "postgresql://postgres@127.0.0.1:5432/test?schema=lat{tag}&auto_migrate=1",
    "redis": "redis://127.0.0.1:6379/0?prefix=lat{tag}",
    "storeless-rabbitmq": "amqp://guest:guest@127.0.0.1:5672//?prefix=lat{tag}",
}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def one(url: str, kind: str, rate: float, seconds: float, work: Path) -> dict[str, float]:
    """Run the load; return p50/p99 (ms) of the call, of start - call's return, and of both."""
    app.use_url(url)
    await app.open()
    queue = f"lat_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, OUT_DIR: str(work), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    cmd = [sys.executable, "-m", "offload", "--url", url, "worker",
           "benchmarks.latency_parts:app", "--queues", queue, "--log-level", "warning"]  # fmt: skip
    worker = await asyncio.create_subprocess_exec(*cmd, env=env, cwd=ROOT)
    task = (alat if kind == "async" else slat).options(queue=queue)
    calls: dict[int, tuple[float, float]] = {}
    try:
        await task.aenqueue(-1) if kind == "async" else await asyncio.to_thread(task.enqueue, -1)
        n = int(rate * seconds)
        start = time.perf_counter()
        for i in range(n):
            pause = start + i / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            t0 = time.time()
            if kind == "async":
                await task.aenqueue(i)
            else:
                await asyncio.to_thread(task.enqueue, i)
            calls[i] = (t0, time.time())
        deadline = time.monotonic() + 10
        # the starts are lines in files another process writes: nothing to wait on but them
        while time.monotonic() < deadline and len(_starts(work)) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 30)
        if url.startswith("amqp"):
            await app.call(functools.partial(_drop_broker_objects, url=url, queue=queue))
        await app.close()
    starts = _starts(work)
    kept = [i for i in calls if i >= rate and i in starts]  # the first second warms up
    call = [calls[i][1] - calls[i][0] for i in kept]
    after = [starts[i] - calls[i][1] for i in kept]
    whole = [starts[i] - calls[i][0] for i in kept]
    return {
        "jobs": len(kept),
        "missing": len(calls) - len(starts),
        **{f"{name} p{q}": quantile(v, q / 100) for name, v in
           (("call", call), ("after", after), ("whole", whole)) for q in (50, 99)},
    }  # fmt: skip


def _starts(work: Path) -> dict[int, float]:
    found: dict[int, float] = {}
    for f in work.glob("*.txt"):
        for line in f.read_text().splitlines():
            i, at = line.split()
            found[int(i)] = float(at)
    found.pop(-1, None)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="sqlite,postgres,redis")
    p.add_argument("--kinds", default="async,sync")
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--seconds", type=float, default=10)
    args = p.parse_args()
    load = open("/proc/loadavg").read().split()[:3]
    print(f"load average at start: {' '.join(load)}; {args.rate:.0f} jobs/s for "
          f"{args.seconds:.0f} s, one worker process at its defaults\n")  # fmt: skip
    print(
        "| backend | task | jobs | call p50 / p99 ms | after the call p50 / p99 | whole p50 / p99 |"
    )
    print("|---|---|---:|---|---|---|")
    for backend in args.backends.split(","):
        for kind in args.kinds.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                url = URLS[backend].format(dir=tmp, tag=uuid.uuid4().hex[:8])
                got = asyncio.run(one(url, kind, args.rate, args.seconds, Path(tmp)))
                if backend == "postgres":
                    _drop_schema(url)
                elif backend == "redis":
                    _drop_keys(url)
            cells = [
                f"{got[f'{n} p50']:.2f} / {got[f'{n} p99']:.2f}" for n in ("call", "after", "whole")
            ]
            lost = f" ({got['missing']:.0f} not started)" if got["missing"] else ""
            print(f"| {backend} | {kind} | {got['jobs']:.0f}{lost} | {' | '.join(cells)} |")


async def _drop_broker_objects(backend: Any, *, url: str, queue: str) -> None:
    prefix = url.split("prefix=")[1].split("&")[0]
    names = {*backend.declared_queues(), f"{prefix}.q.{queue}"}
    await backend.delete_broker_objects(sorted(names))


def _drop_keys(url: str) -> None:
    import redis

    prefix = url.split("prefix=")[1].split("&")[0]
    with redis.Redis.from_url(url.split("?")[0]) as client:
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            client.unlink(key)


def _drop_schema(url: str) -> None:
    import psycopg

    schema = url.split("schema=")[1].split("&")[0]
    with contextlib.closing(psycopg.connect(url.split("?")[0], autocommit=True)) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


if __name__ == "__main__":
    main()
