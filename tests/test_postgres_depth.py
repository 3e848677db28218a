"""The postgresql:// backend at depth (issue 24): the claim index stays short because the
backend vacuums the jobs table as jobs pass, and migration 8's autovacuum settings."""

from __future__ import annotations

import psycopg
import pytest

from offload.backends.postgres import PostgresBackend, vacuum
from offload.errors import ConfigurationError
from offload.outcome import Succeeded
from offload.testing import lease_of
from tests import postgres_support
from tests.postgres_support import Factory, claim, job
from tests.services import POSTGRES_URL

schema = postgres_support.schema
backends = postgres_support.backends


async def claim_scan_buffers(schema: str) -> int:
    """Buffers the claim's index walk reads for 10 jobs (EXPLAIN ANALYZE, BUFFERS)."""
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        cur = await conn.execute(
            f'EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id FROM "{schema}".jobs '
            "WHERE queue = 'q' AND state IN ('scheduled', 'queued') AND run_at <= 1e12 "
            "AND limits IS NULL ORDER BY priority DESC, run_at, seq LIMIT 10"
        )
        row = await cur.fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


async def drain_some(backend: PostgresBackend, n: int) -> None:
    """Claim and complete ``n`` jobs, 500 per claim."""
    for _ in range(n // 500):
        jobs = await backend.claim(claim(limit=500))
        assert len(jobs) == 500
        await backend.complete([(lease_of(j), Succeeded()) for j in jobs])


@pytest.mark.parametrize("vacuum_every", [0, 5_000])
async def test_claims_do_not_walk_the_entries_of_jobs_claimed_before(
    backends: Factory, schema: str, vacuum_every: int
) -> None:
    """Each claimed job leaves a dead entry at the head of the claim index until a VACUUM;
    without one (vacuum_every=0 here, and autovacuum not yet round) a claim reads every page
    of them. With vacuum_every, the backend's own VACUUM removes them as the jobs pass."""
    backend = await backends(vacuum_every=vacuum_every)
    await backend.enqueue([job() for _ in range(6_000)])
    await drain_some(backend, 5_000)  # 10,000 dead row versions: one VACUUM at 5,000
    await backend._vacuum.settled()
    buffers = await claim_scan_buffers(schema)
    if vacuum_every:
        assert backend._vacuum.runs >= 1
        assert buffers <= 6, buffers
    else:
        assert backend._vacuum.runs == 0
        assert buffers >= 20, buffers  # ~5,000 dead entries, a page per 200 or so


async def test_retention_vacuums_what_it_deleted(backends: Factory, schema: str) -> None:
    """A prune that deletes vacuum_every jobs or more vacuums at once: the heap's empty tail
    goes back to the file system, no manual VACUUM."""
    backend = await backends(vacuum_every=1_000, retention=0.0)
    await backend.enqueue([job() for _ in range(3_000)])
    await drain_some(backend, 3_000)
    await backend._vacuum.settled()
    table = f'"{schema}".jobs'
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        before = await (await conn.execute(f"SELECT pg_relation_size('{table}')")).fetchone()
        assert await backend.run_maintenance() == 3_000
        after = await (await conn.execute(f"SELECT pg_relation_size('{table}')")).fetchone()
    assert before is not None and after is not None
    assert after[0] < before[0] // 10, (before, after)


async def test_migration_8_tunes_autovacuum_for_the_jobs_table(
    backends: Factory, schema: str
) -> None:
    await backends()
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'jobs'",
            [schema],
        )
        row = await cur.fetchone()
    assert row is not None
    assert "autovacuum_vacuum_scale_factor=0" in row[0]
    assert "autovacuum_vacuum_threshold=10000" in row[0]


def test_vacuum_every_is_a_count() -> None:
    with pytest.raises(ConfigurationError, match="vacuum_every"):
        PostgresBackend(f"{POSTGRES_URL}?vacuum_every=-1")
    with pytest.raises(ConfigurationError, match="vacuum_every"):
        PostgresBackend(f"{POSTGRES_URL}?vacuum_every=often")


def test_reindex_mb_is_a_size() -> None:
    assert PostgresBackend(f"{POSTGRES_URL}?reindex_mb=0")._opts.reindex_mb == 0
    with pytest.raises(ConfigurationError, match="reindex_mb"):
        PostgresBackend(f"{POSTGRES_URL}?reindex_mb=-1")
    with pytest.raises(ConfigurationError, match="reindex_mb"):
        PostgresBackend(f"{POSTGRES_URL}?reindex_mb=big")


async def index_sizes(schema: str) -> dict[str, int]:
    """Bytes per index of the jobs table, leftovers of interrupted rebuilds included."""
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT c.relname, pg_relation_size(c.oid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass",
            [f'"{schema}".jobs'],
        )
        return {str(name): int(size) for name, size in await cur.fetchall()}


async def fill_and_finish(backend: PostgresBackend, schema: str, n: int) -> None:
    """``n`` jobs enqueued, then all finished long ago (one UPDATE: every index gets an entry
    per row version, as a drain leaves them)."""
    for _ in range(n // 10_000):
        await backend.enqueue([job() for _ in range(10_000)])
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(
            f"UPDATE \"{schema}\".jobs SET state = 'succeeded', started_at = 1, finished_at = 1"
        )


@pytest.mark.parametrize("reindex_mb", [0, 1])
async def test_indexes_shrink_back_once_a_backlog_is_pruned(
    backends: Factory, schema: str, reindex_mb: int
) -> None:
    """A VACUUM gives emptied index pages back to the index only: after a backlog is pruned,
    the indexes keep their peak size until rebuilt. The backend rebuilds those far larger
    than the rows left need (REINDEX INDEX CONCURRENTLY) after its VACUUM; reindex_mb=0 never."""
    backend = await backends(vacuum_every=1_000, retention=0.0, reindex_mb=reindex_mb)
    await fill_and_finish(backend, schema, 40_000)
    peak = await index_sizes(schema)
    assert max(peak.values()) > 2 * 1024 * 1024, peak
    assert await backend.run_maintenance() == 40_000
    after = await index_sizes(schema)
    if reindex_mb:
        assert sum(after.values()) < 0.05 * sum(peak.values()), (peak, after)
        assert set(backend._vacuum.rebuilt) == {n for n, s in peak.items() if s > 1024 * 1024}
        assert set(after) == set(peak)  # rebuilt in place: the same names, nothing left over
    else:
        assert sum(after.values()) >= 0.9 * sum(peak.values()), (peak, after)
        assert backend._vacuum.rebuilt == []


async def test_a_rebuild_left_half_done_is_dropped(backends: Factory, schema: str) -> None:
    """An interrupted REINDEX CONCURRENTLY leaves an invalid copy named <index>_ccnew; the next
    pass drops it, and only such leftovers (a user's valid index of that name stays)."""
    backend = await backends(vacuum_every=1_000, retention=0.0, reindex_mb=1)
    await backend.enqueue([job() for _ in range(2_000)])  # all in one queue
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):  # fails, and leaves it invalid
            await conn.execute(
                f'CREATE UNIQUE INDEX CONCURRENTLY jobs_claim_idx_ccnew ON "{schema}".jobs (queue)'
            )
        await conn.execute(f'CREATE INDEX jobs_users_ccnew ON "{schema}".jobs (task)')
    assert {"jobs_claim_idx_ccnew", "jobs_users_ccnew"} <= set(await index_sizes(schema))
    await drain_some(backend, 2_000)
    assert await backend.run_maintenance() == 2_000
    names = set(await index_sizes(schema))
    assert "jobs_claim_idx_ccnew" not in names
    assert "jobs_users_ccnew" in names


async def test_a_rebuild_that_gives_up_is_not_retried_at_once(
    backends: Factory, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild waits for every older transaction; one that gives up (lock_timeout) would
    give up again at once, after building a whole index: the next try waits an hour."""
    monkeypatch.setattr(vacuum, "REINDEX_LOCK_TIMEOUT", "300ms")
    backend = await backends(vacuum_every=1_000, retention=0.0, reindex_mb=1)
    await fill_and_finish(backend, schema, 40_000)
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as old:
        await old.execute(f'SELECT count(*) FROM "{schema}".jobs')  # a transaction left open
        assert await backend.run_maintenance() == 40_000  # the rebuild gave up; no error
        assert backend._vacuum.rebuilt == []
        await old.rollback()
    await backend._vacuum.run()  # nothing in the way now, but within the back-off
    assert backend._vacuum.rebuilt == []
    monkeypatch.setattr(backend._vacuum, "_rebuild_after", 0.0)  # an hour later
    await backend._vacuum.run()
    assert backend._vacuum.rebuilt != []


async def test_a_table_never_vacuumed_is_not_judged(backends: Factory, schema: str) -> None:
    """Before its first VACUUM or ANALYZE the table's row count is unknown (reltuples -1):
    no index is taken for bloated on it, however large."""
    backend = await backends(vacuum_every=0, reindex_mb=1)
    for _ in range(4):
        await backend.enqueue([job() for _ in range(10_000)])
    assert max((await index_sizes(schema)).values()) > 1024 * 1024
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        assert await backend._vacuum._pick(conn) == ([], [])
