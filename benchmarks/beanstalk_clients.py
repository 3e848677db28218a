"""Beanstalkd clients side by side: greenstalk (sync), aiostalk (asyncio) and offload's own
pipelined asyncio client (offload.backends.beanstalkd.protocol), on the local beanstalkd.

    PYTHONPATH=src .venv/bin/python benchmarks/beanstalk_clients.py [--n 5000] [--port 11300]
        [--rounds 5]

Each client, in its own tube: N puts one at a time (each waits for its reply), then N
reserve+delete one at a time; then N puts from 50 concurrent asyncio tasks sharing one
connection (greenstalk: from 50 threads of a pool, one client each, as a sync client must);
offload's client also puts N in one pipelined batch. Prints operations per second. Needs
greenstalk and aiostalk installed (pip install greenstalk aiostalk).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiostalk  # type: ignore[import-untyped]
import greenstalk

from offload.backends.beanstalkd import protocol
from offload.backends.beanstalkd.protocol import Connection

CONCURRENCY = 50


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>9,.0f}/s"


def bench_greenstalk(port: int, n: int) -> dict[str, float]:
    tube = f"bench_g_{uuid.uuid4().hex[:8]}"
    out: dict[str, float] = {}
    with greenstalk.Client(("127.0.0.1", port), use=tube, watch=tube) as c:
        t0 = time.perf_counter()
        for _ in range(n):
            c.put(b"x" * 30)
        out["put 1-by-1"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(n):
            job = c.reserve(timeout=0)
            c.delete(job)
        out["reserve+delete 1-by-1"] = n / (time.perf_counter() - t0)
    local = threading.local()
    clients: list[greenstalk.Client] = []

    def put(_: int) -> None:
        if not hasattr(local, "c"):
            local.c = greenstalk.Client(("127.0.0.1", port), use=tube, watch=tube)
            clients.append(local.c)
        local.c.put(b"x" * 30)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        t0 = time.perf_counter()
        list(pool.map(put, range(n)))
        out[f"put, {CONCURRENCY} concurrent"] = n / (time.perf_counter() - t0)
    with greenstalk.Client(("127.0.0.1", port), use=tube, watch=tube) as c:
        for _ in range(n):
            c.delete(c.reserve(timeout=0))
    for cl in clients:
        cl.close()
    return out


async def bench_aiostalk(port: int, n: int) -> dict[str, float]:
    tube = f"bench_a_{uuid.uuid4().hex[:8]}"
    out: dict[str, float] = {}
    c: Any = aiostalk.Client(("127.0.0.1", port), use=tube, watch=tube, encoding=None)
    await c.connect()
    t0 = time.perf_counter()
    for _ in range(n):
        await c.put(b"x" * 30)
    out["put 1-by-1"] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(n):
        job = await c.reserve(timeout=0)
        await c.delete(job)
    out["reserve+delete 1-by-1"] = n / (time.perf_counter() - t0)
    # One connection cannot be shared: two tasks would wait on its reader at once
    # (RuntimeError). A lock per connection is what a user would add.
    lock = asyncio.Lock()

    async def put() -> None:
        async with lock:
            await c.put(b"x" * 30)

    out[f"put, {CONCURRENCY} concurrent"] = await concurrent(put, n)
    for _ in range(n):
        await c.delete(await c.reserve(timeout=0))
    await c.close()
    return out


async def bench_offload(port: int, n: int) -> dict[str, float]:
    tube = f"bench_o_{uuid.uuid4().hex[:8]}"
    out: dict[str, float] = {}
    c = await Connection.open("127.0.0.1", port, 30)
    await c.call([protocol.use(tube), protocol.watch(tube), protocol.ignore("default")])
    put = protocol.put(b"x" * 30, 0, 0, 60)
    t0 = time.perf_counter()
    for _ in range(n):
        await c.call([put])
    out["put 1-by-1"] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(n):
        (r,) = await c.call([protocol.reserve(0)])
        await c.call([protocol.job_command(b"delete", int(r.args[0]))])
    out["reserve+delete 1-by-1"] = n / (time.perf_counter() - t0)

    async def one() -> None:
        await c.call([put])

    out[f"put, {CONCURRENCY} concurrent"] = await concurrent(one, n)
    await drain(c, n)
    t0 = time.perf_counter()
    await c.call([put] * n, 60)
    out["put, one pipelined batch"] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    await drain(c, n)
    out["reserve+delete, batches of 100"] = n / (time.perf_counter() - t0)
    await c.close()
    return out


async def drain(c: Connection, n: int) -> None:
    for start in range(0, n, 100):
        got = await c.call([protocol.reserve(0)] * min(100, n - start), 60)
        await c.call([protocol.job_command(b"delete", int(r.args[0])) for r in got], 60)


async def concurrent(op: Callable[[], Awaitable[None]], n: int) -> float:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await op()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--port", type=int, default=11300)
    parser.add_argument("--rounds", type=int, default=5, help="clients interleaved; medians")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        runs.setdefault("greenstalk 2.1 (sync)", []).append(bench_greenstalk(args.port, args.n))
        runs.setdefault("aiostalk 1.3 (asyncio)", []).append(
            asyncio.run(bench_aiostalk(args.port, args.n))
        )
        runs.setdefault("offload protocol.py (asyncio, pipelined)", []).append(
            asyncio.run(bench_offload(args.port, args.n))
        )
    results = {
        name: {op: statistics.median(r[op] for r in rs) for op in rs[0]}
        for name, rs in runs.items()
    }
    ops = list(dict.fromkeys(op for r in results.values() for op in r))
    print(f"{args.n} jobs each, operations per second, median of {args.rounds} rounds\n")
    print("| client | " + " | ".join(ops) + " |")
    print("|---|" + "---|" * len(ops))
    for name, r in results.items():
        cells = [f"{r[op]:,.0f}" if op in r else "—" for op in ops]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
