"""A prune pass over a backlog of finished jobs that their task keeps longer than the backend.

    python benchmarks/retention_backlog.py sqlite [--jobs 1000000]
    python benchmarks/retention_backlog.py postgres [--jobs 1000000] [--dsn postgresql://...]

Stores ``--jobs`` succeeded jobs carrying their own retention (a year), all older than the
backend's (``retention_succeeded=0``: everything without one goes at once), then times
``run_maintenance`` (nothing to delete) five times, median. For comparison, in the same run,
the backend's prune query over a plain ``(state, finished_at)`` index of finished jobs (a design
without the split index), which walks the whole backlog on every pass to find none.
The rows are written with SQL, not through the backend, so that a million takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from offload.backends import from_url  # noqa: E402
from offload.backends.postgres.queries import load_queries  # noqa: E402
from offload.backends.sqlite.queries import OWN  # noqa: E402

YEAR_S = 31_536_000
ROUNDS = 5


async def median_ms(step: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        await step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


async def maintenance_ms(url: str) -> float:
    """The median of offload's own prune pass on the backend at ``url``."""
    backend = from_url(url)
    await backend.open()
    try:
        return await median_ms(backend.run_maintenance)
    finally:
        await backend.close()


async def sqlite_case(jobs: int) -> tuple[float, float]:
    path = f"{tempfile.mkdtemp()}/backlog.db"
    url = f"sqlite:///{path}?retention_succeeded=0"
    backend = from_url(url)
    await backend.open()
    await backend.close()
    raw = sqlite3.connect(path, isolation_level=None)
    now = time.time()
    rows = ((f"j{i}", now - 99, now - 50 - i * 1e-4) for i in range(jobs))
    raw.execute("BEGIN")
    raw.executemany(
        "INSERT INTO offload_jobs (id, task, queue, args, state, priority, max_attempts, run_at,"
        " created_at, finished_at, keep_succeeded_s) VALUES (?, 't', 'q', x'7b7d', 'succeeded',"
        f" 0, 3, 0, ?, ?, {YEAR_S})",
        rows,
    )
    raw.execute("COMMIT")
    raw.execute("ANALYZE")
    ours = await maintenance_ms(url)
    raw.execute(
        "CREATE INDEX plain ON offload_jobs (state, finished_at) WHERE finished_at IS NOT NULL"
    )
    query = (
        "SELECT seq FROM offload_jobs INDEXED BY plain WHERE state = 'succeeded'"
        f" AND finished_at <= ? AND finished_at IS NOT NULL AND {OWN} IS NULL LIMIT 1000"
    )

    async def plain() -> object:
        return raw.execute(query, (time.time(),)).fetchall()

    return ours, await median_ms(plain)


async def postgres_case(jobs: int, dsn: str) -> tuple[float, float]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    url = f"{dsn}?schema={schema}&auto_migrate=1&retention_succeeded=0"
    backend = from_url(url)
    await backend.open()
    await backend.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(
                f"INSERT INTO {schema}.jobs (id, task, queue, args, state, priority, max_attempts,"
                " run_at, created_at, finished_at, keep_succeeded_s)"
                " SELECT 'j' || g, 't', 'q', '\\x7b7d'::bytea, 'succeeded', 0, 3, 0, 0,"
                f" extract(epoch from now()) - 50 - g * 1e-4, {YEAR_S}"
                f" FROM generate_series(1, {jobs}) g"
            )
            conn.execute(f"ANALYZE {schema}.jobs")
            ours = await maintenance_ms(url)
            conn.execute(
                f"CREATE INDEX plain ON {schema}.jobs (state, finished_at)"
                " WHERE finished_at IS NOT NULL"
            )
            conn.execute(f"DROP INDEX {schema}.jobs_finished_backend_idx")
            prune = load_queries(schema)["prune_batch"].replace("DELETE FROM", "SELECT * FROM", 1)
            params = {"state": "succeeded", "older_than_s": 0.0, "batch": 1000}

            async def plain() -> object:
                return conn.execute(prune, params).fetchall()

            return ours, await median_ms(plain)
        finally:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("engine", choices=["sqlite", "postgres"])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--dsn", default="postgresql://127.0.0.1:5432/test")
    args = parser.parse_args()
    if args.engine == "sqlite":
        ours, plain = asyncio.run(sqlite_case(args.jobs))
    else:
        ours, plain = asyncio.run(postgres_case(args.jobs, args.dsn))
    print(
        f"{args.engine}, {args.jobs} finished jobs kept a year by their own retention: "
        f"run_maintenance {ours:.2f} ms (median of {ROUNDS}); the backend's prune query over "
        f"a plain (state, finished_at) index {plain:.2f} ms"
    )


if __name__ == "__main__":
    main()
