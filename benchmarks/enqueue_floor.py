"""What one sync ``task.enqueue()`` costs, next to the floor of one round trip to its backend.

The one-by-one enqueue target (issue 15) asks for twice the speed of Huey on Redis and of
procrastinate on PostgreSQL. A stored enqueue needs at least one round trip; this measures, in
one process and interleaved rounds (so machine noise falls on all alike), how close
offload's sync enqueue is to that floor::

    .venv/bin/python benchmarks/enqueue_floor.py [--calls 3000] [--rounds 5]

Redis rows: a redis-py ``PING`` (the cheapest command through redis-py's client: what any
library built on it pays per call), a ``PING`` on a bare redis-py connection (the round trip
with none of the client's per-command machinery), an ``LPUSH`` of a 100-byte message (the one
command Huey's and RQ-like enqueues send), offload's enqueue script called directly (with its
server-side time from ``INFO commandstats``), and offload's ``task.enqueue()``.

PostgreSQL rows: ``SELECT 1`` on a psycopg connection in autocommit (the round trip), an
``INSERT`` of one row committed (a round trip plus the commit's WAL flush: what any stored
enqueue pays at ``synchronous_commit=on``), the same of a job row into a copy of offload's
jobs table with all its indexes, and offload's ``task.enqueue()``.

Async rows (``--async``; each section on one event loop, the caller's): Redis, a
``redis.asyncio`` ``PING`` beside offload's ``await task.aenqueue()`` (the SAQ/arq/taskiq
comparison); RabbitMQ, an aio-pika publish of a persistent 100-byte message to a durable queue
with publisher confirms (what "stored before it returns" costs on a broker) and without (what
a publish that does not wait for the broker costs: Celery's ``delay`` on py-amqp waits for no
confirm), beside offload's ``aenqueue`` store-less and with a Redis store.

Each figure is the median over the rounds of microseconds per call.

``--rate R`` paces the sync rows instead: one call every 1/R seconds, as compare.py's latency
phase enqueues (200/s), each call timed alone; each figure is then the median over the rounds
of the calls' p50 and p99. Between paced calls the machine idles, and a call that finds it
idle runs slower than one in a tight loop (on this project's 2-core VM about 4x for a ``PING``):
this is the call that enqueue-to-start latency holds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aio_pika
import psycopg
import redis
import redis.asyncio

import offload

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

AsyncRow = Callable[[], Awaitable[object]]


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def paced_us(fn: Callable[[], object], calls: int, rate: float) -> tuple[float, float]:
    """p50 and p99 (µs) of ``calls`` calls made one every ``1 / rate`` seconds."""
    took: list[float] = []
    start = time.perf_counter()
    for i in range(calls):
        pause = start + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        t0 = time.perf_counter()
        fn()
        took.append(time.perf_counter() - t0)
    took.sort()
    return took[len(took) // 2] * 1e6, took[min(len(took) - 1, int(len(took) * 0.99))] * 1e6


CLEANUP: list[Callable[[], object]] = []


def noop_task(url: str) -> tuple[offload.App, Any]:
    """An app on ``url`` and its no-op task bound to queue ``q``, opened by a first enqueue
    (the sync client made, the scripts loaded, the schema migrated)."""
    app = offload.App(url)

    @app.task(name="noop")
    def noop(i: int) -> None:
        return None

    bound = noop.options(queue="q")
    bound.enqueue(0)
    return app, bound


def redis_rows(calls: int) -> dict[str, Callable[[], Any]]:
    prefix = f"floor{uuid.uuid4().hex[:8]}"
    app, bound = noop_task(f"{REDIS_URL}?prefix={prefix}")
    client = redis.Redis.from_url(REDIS_URL)
    bare = client.connection_pool.get_connection()
    backend: Any = app.backend

    def bare_ping() -> None:
        bare.send_command("PING")  # type: ignore[no-untyped-call]
        bare.read_response()

    message = b"x" * 100
    list_key = f"{prefix}:list"

    def cleanup() -> None:
        app.close_sync()
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            client.unlink(key)

    CLEANUP.append(cleanup)

    def script() -> None:
        keys, argv = backend._enqueue_call([bound.prepare(1)], ["q"], {})
        backend._sync.run(lambda c: backend._eval(c, "enqueue", keys, argv))

    return {
        "redis-py PING": client.ping,
        "bare connection PING": bare_ping,
        "redis-py LPUSH 100 B": lambda: client.lpush(list_key, message),
        "offload enqueue script": script,
        "offload task.enqueue()": lambda: bound.enqueue(1),
    }


def postgres_rows(calls: int) -> dict[str, Callable[[], Any]]:
    schema = f"floor{uuid.uuid4().hex[:8]}"
    app, bound = noop_task(f"{POSTGRES_URL}?schema={schema}&auto_migrate=1")
    conn = psycopg.connect(POSTGRES_URL, autocommit=True)
    conn.execute(f"CREATE TABLE {schema}.floor (id bigserial PRIMARY KEY, body bytea)")

    def cleanup() -> None:
        app.close_sync()
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()

    CLEANUP.append(cleanup)
    body = b"x" * 100
    # A copy of offload's jobs table with all its indexes, and the row of the job enqueued
    # above as the template: one committed INSERT of a job, with none of offload's code.
    conn.execute(f"CREATE TABLE {schema}.floor_jobs (LIKE {schema}.jobs INCLUDING ALL)")
    cols = [
        str(r[0])
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
            " AND table_name = 'jobs' AND is_generated = 'NEVER' AND is_identity = 'NO'"
            " ORDER BY ordinal_position",
            (schema,),
        )
    ]
    picks = ", ".join("%s" if c == "id" else c for c in cols)
    insert_job = (
        f"INSERT INTO {schema}.floor_jobs ({', '.join(cols)}) "
        f"SELECT {picks} FROM {schema}.jobs LIMIT 1"
    )
    return {
        "psycopg SELECT 1": lambda: conn.execute("SELECT 1").fetchone(),
        "psycopg INSERT, committed": lambda: conn.execute(
            f"INSERT INTO {schema}.floor (body) VALUES (%s)", (body,)
        ),
        "psycopg INSERT of a job row (offload's indexes), committed": lambda: conn.execute(
            insert_job.encode(), (uuid.uuid4().hex,)
        ),
        "offload task.enqueue()": lambda: bound.enqueue(1),
    }


def script_server_us(calls: int, rows: dict[str, Callable[[], Any]], rate: float | None) -> float:
    client = redis.Redis.from_url(REDIS_URL)
    client.config_resetstat()
    if rate:
        paced_us(rows["offload enqueue script"], calls, rate)
    else:
        per_call_us(rows["offload enqueue script"], calls)
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return float(stats.get("usec_per_call", 0.0))


def measure(rows: dict[str, Callable[[], Any]], calls: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            samples[name].append(per_call_us(fn, calls))
    return {name: statistics.median(v) for name, v in samples.items()}


def measure_paced(
    rows: dict[str, Callable[[], Any]], calls: int, rounds: int, rate: float
) -> dict[str, tuple[float, float]]:
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            samples[name].append(paced_us(fn, calls, rate))
    return {
        name: (statistics.median(p[0] for p in v), statistics.median(p[1] for p in v))
        for name, v in samples.items()
    }


async def async_per_call_us(fn: AsyncRow, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        await fn()
    return (time.perf_counter() - t0) / calls * 1e6


async def async_measure(rows: dict[str, AsyncRow], calls: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            samples[name].append(await async_per_call_us(fn, calls))
    return {name: statistics.median(v) for name, v in samples.items()}


async def async_task(url: str) -> tuple[offload.App, Any]:
    """:func:`noop_task`, opened on the running loop by a first ``aenqueue``."""
    app = offload.App(url)

    @app.task(name="noop")
    def noop(i: int) -> None:
        return None

    bound = noop.options(queue="q")
    await bound.aenqueue(0)
    return app, bound


async def redis_async(calls: int, rounds: int) -> dict[str, float]:
    prefix = f"floor{uuid.uuid4().hex[:8]}"
    app, bound = await async_task(f"{REDIS_URL}?prefix={prefix}")
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        rows: dict[str, AsyncRow] = {
            "redis.asyncio PING": client.ping,
            "offload await task.aenqueue()": lambda: bound.aenqueue(1),
        }
        return await async_measure(rows, calls, rounds)
    finally:
        await app.close()
        async for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            await client.unlink(key)
        await client.aclose()


async def rabbitmq_async(calls: int, rounds: int) -> dict[str, float]:
    prefix = f"floor{uuid.uuid4().hex[:8]}"
    store = quote(f"{REDIS_URL}?prefix={prefix}s", safe="")
    storeless, less = await async_task(f"{AMQP_URL}?prefix={prefix}a")
    stored, with_store = await async_task(f"{AMQP_URL}?prefix={prefix}b&store={store}")
    conn = await aio_pika.connect(AMQP_URL)
    confirmed = await conn.channel(publisher_confirms=True)
    unconfirmed = await conn.channel(publisher_confirms=False)
    queue = await confirmed.declare_queue(f"{prefix}.floor", durable=True)
    body = aio_pika.Message(b"x" * 100, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    try:
        rows: dict[str, AsyncRow] = {
            "aio-pika publish, confirmed": lambda: confirmed.default_exchange.publish(
                body, routing_key=queue.name
            ),
            "aio-pika publish, no confirm": lambda: unconfirmed.default_exchange.publish(
                body, routing_key=queue.name
            ),
            "offload await task.aenqueue(), store-less": lambda: less.aenqueue(1),
            "offload await task.aenqueue(), Redis store": lambda: with_store.aenqueue(1),
        }
        return await async_measure(rows, calls, rounds)
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await conn.close()
        await storeless.close()
        await stored.close()
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        async for key in client.scan_iter(match=f"*{prefix}*", count=1000):  # the store's
            await client.unlink(key)
        await client.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000, help="calls per row per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--async", dest="run_async", action="store_true", help="the async rows too")
    p.add_argument("--rate", type=float, default=None, help="pace the sync rows: calls per second")
    args = p.parse_args()
    load = open("/proc/loadavg").read().split()[:3]
    print(f"load average at start: {' '.join(load)}; {args.calls} calls x {args.rounds} rounds\n")
    if args.rate:
        paced_main(args.calls, args.rounds, args.rate)
        return
    print("| backend | call | µs per call | ÷ floor |")
    print("|---|---|---|---|")
    for backend, make, floor in (
        ("Redis", redis_rows, "redis-py PING"),
        ("PostgreSQL", postgres_rows, "psycopg SELECT 1"),
    ):
        rows = make(args.calls)
        got = measure(rows, args.calls, args.rounds)
        for name, us in got.items():
            print(f"| {backend} | {name} | {us:,.0f} | {us / got[floor]:.2f}x |")
        if backend == "Redis":
            server = script_server_us(args.calls, rows, None)
            print(f"| Redis | (enqueue script, server time only) | {server:,.0f} | |")
    for cleanup in CLEANUP:
        cleanup()
    if not args.run_async:
        return
    for backend, section, floor in (
        ("Redis", redis_async, "redis.asyncio PING"),
        ("RabbitMQ", rabbitmq_async, "aio-pika publish, confirmed"),
    ):
        got = asyncio.run(section(args.calls, args.rounds))
        for name, us in got.items():
            print(f"| {backend} | {name} | {us:,.0f} | {us / got[floor]:.2f}x |")


def paced_main(calls: int, rounds: int, rate: float) -> None:
    print(f"paced: one call every {1000 / rate:g} ms\n")
    print("| backend | call | p50 µs | p99 µs | p50 ÷ floor's |")
    print("|---|---|---|---|---|")
    for backend, make, floor in (
        ("Redis", redis_rows, "redis-py PING"),
        ("PostgreSQL", postgres_rows, "psycopg SELECT 1"),
    ):
        rows = make(calls)
        got = measure_paced(rows, calls, rounds, rate)
        for name, (p50, p99) in got.items():
            print(f"| {backend} | {name} | {p50:,.0f} | {p99:,.0f} | {p50 / got[floor][0]:.2f}x |")
        if backend == "Redis":
            server = script_server_us(calls, rows, rate)
            print(f"| Redis | (enqueue script, server time only, mean) | {server:,.0f} | | |")
    for cleanup in CLEANUP:
        cleanup()


if __name__ == "__main__":
    main()
