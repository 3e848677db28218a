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
enqueue pays at ``synchronous_commit=on``), and offload's ``task.enqueue()``.

Each figure is the median over the rounds of microseconds per call.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import redis

import offload

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


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
    return {
        "psycopg SELECT 1": lambda: conn.execute("SELECT 1").fetchone(),
        "psycopg INSERT, committed": lambda: conn.execute(
            f"INSERT INTO {schema}.floor (body) VALUES (%s)", (body,)
        ),
        "offload task.enqueue()": lambda: bound.enqueue(1),
    }


def script_server_us(calls: int, rows: dict[str, Callable[[], Any]]) -> float:
    client = redis.Redis.from_url(REDIS_URL)
    client.config_resetstat()
    per_call_us(rows["offload enqueue script"], calls)
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return float(stats.get("usec_per_call", 0.0))


def measure(rows: dict[str, Callable[[], Any]], calls: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            samples[name].append(per_call_us(fn, calls))
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000, help="calls per row per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    load = open("/proc/loadavg").read().split()[:3]
    print(f"load average at start: {' '.join(load)}; {args.calls} calls x {args.rounds} rounds\n")
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
            server = script_server_us(args.calls, rows)
            print(f"| Redis | (enqueue script, server time only) | {server:,.0f} | |")
    for cleanup in CLEANUP:
        cleanup()


if __name__ == "__main__":
    main()
