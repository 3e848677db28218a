"""What a bulk enqueue costs per job, next to the floor of storing a job on its engine.

Issue 15 asks for 100,000 jobs/s from ``aenqueue_many`` in batches of 1,000 on Redis and
SQLite: 10 µs per job, for everything. This splits that time, in one process and interleaved
rounds, into the part on the caller (``task.prepare``: binding and validating the arguments,
the id) and the store, and puts the store beside what the engine itself needs::

    .venv/bin/python benchmarks/bulk_floor.py [--batches 20] [--rounds 3]

SQLite rows (a fresh file, WAL, ``synchronous=full``, as offload opens it): one transaction of
1,000 rows through ``executemany`` into a table with no index (what any row costs), the same
of offload's own rows into its jobs table with all its indexes, with the statement offload
uses and the parameters built beforehand (SQLite's own work for offload's row: no Python per
job), and offload's ``aenqueue_many`` of jobs prepared beforehand.

Redis rows: a Lua script that writes 1,000 hashes of the fields offload keeps and adds them to
one sorted set (the least a job store on Redis does per job; its server time from
``INFO commandstats``), offload's enqueue script's server time per job, and offload's
``aenqueue_many`` of jobs prepared beforehand (wall time).

Each figure is the median over the rounds of microseconds per job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis

import offload
from offload.backends.common import new_record
from offload.backends.sqlite.queries import Q
from offload.backends.sqlite.transactions import _insert_params

REDIS_URL = "redis://127.0.0.1:6379/0"
BATCH = 1000

Row = Callable[[], Awaitable[float]]  # one round of a row: microseconds per job

# The least a Redis job store writes per job: a hash of the fields offload keeps, and a
# sorted-set entry to find it by.
FLOOR_LUA = """
local base, blob, ready = KEYS[1], ARGV[1], {}
for i = 1, tonumber(ARGV[2]) do
  local id = ARGV[3] .. i
  redis.call('HSET', base .. ':j:' .. id, 'd', blob, 'p', 0, 'm', 3, 'c', ARGV[4], 'a', 0,
    'z', id, 's', 'queued', 'r', ARGV[4])
  ready[#ready + 1] = i
  ready[#ready + 1] = id
end
for i = 1, #ready, 1000 do
  redis.call('ZADD', base .. ':ready', unpack(ready, i, math.min(i + 999, #ready)))
end
return 1
"""


def make_app(url: str) -> tuple[offload.App, Any]:
    app = offload.App(url)

    @app.task(name="noop")
    def noop(i: int) -> None:
        return None

    return app, noop.options(queue="q")


async def timed(batches: int, one: Callable[[int], Awaitable[object]]) -> float:
    """Microseconds per job of ``batches`` calls of ``one(batch_number)``, 1,000 jobs each."""
    t0 = time.perf_counter()
    for b in range(batches):
        await one(b)
    return (time.perf_counter() - t0) / (batches * BATCH) * 1e6


PREPARE = "task.prepare (the caller's part)"
STORE = "offload aenqueue_many (store only)"


def with_offload(
    app: offload.App, bound: Any, batches: int, floors: dict[str, Row]
) -> dict[str, Row]:
    """An engine's rows: offload's ``task.prepare``, the engine's ``floors``, offload's store."""

    async def prepare_row() -> float:
        async def one(_: int) -> None:
            [bound.prepare(i) for i in range(BATCH)]

        return await timed(batches, one)

    async def store_row() -> float:
        jobs = [[bound.prepare(i) for i in range(BATCH)] for _ in range(batches)]
        return await timed(batches, lambda b: app.aenqueue_many(jobs[b]))

    return {PREPARE: prepare_row, **floors, STORE: store_row}


async def sqlite_rows(directory: str, batches: int) -> tuple[dict[str, Row], Callable[[], Any]]:
    path = os.path.join(directory, f"floor-{uuid.uuid4().hex[:8]}.db")
    app, bound = make_app(f"sqlite:///{path}?synchronous=full")
    await app.aenqueue_many([bound.prepare(0)])  # opens it: schema, writer thread
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE bare (id TEXT, args BLOB, run_at REAL)")

    def transaction(sql: str, rows: list[tuple[Any, ...]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")

    async def bare_row() -> float:
        rows = [[(uuid.uuid4().hex, b'{"i":1}', 0.0) for _ in range(BATCH)] for _ in range(batches)]
        return await timed(
            batches, lambda b: _sync(transaction, "INSERT INTO bare VALUES (?, ?, ?)", rows[b])
        )

    async def jobs_row() -> float:
        now = time.time()
        rows = [
            [_insert_params(new_record(bound.prepare(i), now)) for i in range(BATCH)]
            for _ in range(batches)
        ]
        return await timed(batches, lambda b: _sync(transaction, Q["insert_job"], rows[b]))

    async def close() -> None:
        conn.close()
        await app.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)

    floors: dict[str, Row] = {
        "executemany into a table with no index, committed": bare_row,
        "executemany of offload's rows (all its indexes), committed": jobs_row,
    }
    return with_offload(app, bound, batches, floors), close


async def _sync(fn: Callable[..., None], *args: Any) -> None:
    fn(*args)


async def redis_rows(batches: int) -> tuple[dict[str, Row], Callable[[], Any]]:
    prefix = f"floor{uuid.uuid4().hex[:8]}"
    app, bound = make_app(f"{REDIS_URL}?prefix={prefix}")
    await app.aenqueue_many([bound.prepare(0)])
    client = redis.Redis.from_url(REDIS_URL)
    floor = client.register_script(FLOOR_LUA)
    blob = bytes(25)  # about the size of a no-op job's encoded fields
    created = str(int(time.time() * 1e6))

    def server_us(command: str) -> float:
        stats = client.info("commandstats").get(f"cmdstat_{command}", {})
        return float(stats.get("usec", 0)) / (batches * BATCH)

    async def floor_row() -> float:
        client.config_resetstat()
        for b in range(batches):
            floor(keys=[f"{prefix}:floor"], args=[blob, BATCH, f"{b}-", created])
        return server_us("evalsha")

    async def script_row() -> float:
        jobs = [[bound.prepare(i) for i in range(BATCH)] for _ in range(batches)]
        client.config_resetstat()
        for b in range(batches):
            await app.aenqueue_many(jobs[b])
        return server_us("evalsha")

    async def close() -> None:
        await app.close()
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            client.unlink(key)
        client.close()

    floors: dict[str, Row] = {
        "Lua: a hash of offload's fields + a sorted-set entry (server time)": floor_row,
        "offload enqueue script (server time)": script_row,
    }
    return with_offload(app, bound, batches, floors), close


async def measure(rows: dict[str, Row], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, row in rows.items():
            samples[name].append(await row())
    return {name: statistics.median(v) for name, v in samples.items()}


async def run(batches: int, rounds: int, directory: str) -> None:
    print("| engine | per job | µs | jobs/s it allows |")
    print("|---|---|---:|---:|")
    for engine, rows, close in (
        ("SQLite", *(await sqlite_rows(directory, batches))),
        ("Redis", *(await redis_rows(batches))),
    ):
        try:
            got = await measure(rows, rounds)
        finally:
            await close()
        for name, us in got.items():
            print(f"| {engine} | {name} | {us:.2f} | {1e6 / us:,.0f} |")
        prepare, store = got[PREPARE], got[STORE]
        print(f"| {engine} | prepare + store (what the benchmark's bulk row pays) | "
              f"{prepare + store:.2f} | {1e6 / (prepare + store):,.0f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=20, help="batches of 1,000 per row per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the SQLite files go")
    args = p.parse_args()
    load = open("/proc/loadavg").read().split()[:3]
    print(f"load average at start: {' '.join(load)}; {args.batches} batches of {BATCH} x "
          f"{args.rounds} rounds\n")  # fmt: skip
    asyncio.run(run(args.batches, args.rounds, args.dir))


if __name__ == "__main__":
    main()
