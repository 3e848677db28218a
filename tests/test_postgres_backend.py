"""The postgresql:// backend: the conformance suite plus its own guarantees (migrations,
transactional enqueue, retention, outages). Each test works in a schema of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from offload.backends import from_url
from offload.backends.common import ExpiredJob
from offload.backends.postgres import PostgresBackend
from offload.backends.postgres.enqueue import AsyncQueryConn
from offload.backends.postgres.queries import load_migrations
from offload.backends.postgres.recovery import Channels, find_expired, write_expired
from offload.backends.retention import Retention
from offload.errors import BackendUnavailable, ConfigurationError, InvalidState
from offload.job import ClaimRequest, JobState
from offload.outcome import Succeeded
from offload.testing import (
    PROMPT_S,
    BackendConformance,
    MakeBackend,
    claim_one,
    lease_of,
    must_get,
)
from tests import postgres_support
from tests.postgres_support import Factory, claim, job
from tests.services import POSTGRES_URL

schema = postgres_support.schema  # fixtures: a schema of the test's own, backends on it
backends = postgres_support.backends


class TestPostgresConformance(BackendConformance):
    @pytest.fixture
    async def make_backend(self, backends: Factory) -> MakeBackend:
        return backends


# -- schema and URL ----------------------------------------------------------------------------


async def test_open_refuses_an_out_of_date_schema_until_migrated(schema: str) -> None:
    backend = from_url(f"{POSTGRES_URL}?schema={schema}")
    assert isinstance(backend, PostgresBackend)
    with pytest.raises(ConfigurationError, match="run: offload migrate"):
        await backend.open()
    assert await backend.migrate() == len(load_migrations(schema))
    assert await backend.migrate() == 0  # idempotent
    await backend.open()
    try:
        assert await backend.counts() == {}
    finally:
        await backend.close()


async def test_many_processes_migrate_a_fresh_schema_at_once(schema: str) -> None:
    """Workers started together with auto_migrate on a fresh schema: each migrates, none fails
    on the race of two CREATE ... IF NOT EXISTS (a CI run once saw a worker exit on
    "duplicate key value violates unique constraint pg_type_typname_nsp_index")."""
    for round_ in range(4):
        name = f"{schema}_{round_}"
        backends = [from_url(f"{POSTGRES_URL}?schema={name}") for _ in range(8)]
        try:
            applied = await asyncio.gather(*(b.migrate() for b in backends))  # type: ignore[attr-defined]
            assert sum(applied) == len(load_migrations(name))
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


async def test_migration_2_scopes_the_keys_of_an_existing_schema(schema: str) -> None:
    """A schema created by release 1 (one active job per key across queues) is refused until
    migrated; after migration 2 its jobs keep their keys, scoped by queue."""
    version_1 = load_migrations(schema)[0]
    assert version_1[0] == 1
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            f'CREATE TABLE "{schema}".migrations (version integer PRIMARY KEY, applied_at float8)'
        )
        await conn.execute(version_1[1].encode())
        await conn.execute(f'INSERT INTO "{schema}".migrations VALUES (1, 0)')
        await conn.execute(
            f'INSERT INTO "{schema}".jobs (id, task, queue, args, state, max_attempts, run_at, '
            "created_at, key) VALUES ('old', 't', 'qa', '{}', 'queued', 3, 0, 0, 'k')"
        )
    backend = PostgresBackend(f"{POSTGRES_URL}?schema={schema}")
    with pytest.raises(ConfigurationError, match="run: offload migrate"):
        await backend.open()
    assert await backend.migrate() == len(load_migrations(schema)) - 1
    await backend.open()
    try:
        old = await backend.get("old")  # migration 7: no headers, no progress yet
        assert old is not None and old.headers == {} and old.progress is None
        same, other = await backend.enqueue([job("qa", key="k"), job("qb", key="k")])
        assert same.id == "old" and other.id != "old" and other.queue == "qb"
    finally:
        await backend.close()


def test_url_options_are_stripped_and_the_password_masked() -> None:
    backend = PostgresBackend(
        "postgresql://u:secret@db:5432/app?schema=jobs&retention=60&sslmode=disable&timeout=2"
    )
    assert (
        backend.url
        == "postgresql://u:***@db:5432/app?schema=jobs&retention=60&sslmode=disable&timeout=2"
    )
    assert backend.schema == "jobs" and backend.retention == Retention(60.0, 60.0, 60.0)
    with pytest.raises(ConfigurationError):
        PostgresBackend("postgresql://db/app?schema=Robert');DROP")


def test_an_unknown_flag_spelling_is_refused_not_read_as_false() -> None:
    with pytest.raises(ConfigurationError, match="auto_migrate"):
        PostgresBackend("postgresql://db/app?auto_migrate=maybe")
    with pytest.raises(ConfigurationError, match="auto_migrate"):
        PostgresBackend("postgresql://db/app", auto_migrate="maybe")
    assert PostgresBackend("postgresql://db/app?auto_migrate=off")._opts.auto_migrate is False


async def test_libpq_options_in_the_url_reach_the_server(schema: str) -> None:
    """A space in a libpq parameter must stay %20: libpq does not read "+" as a space."""
    backend = PostgresBackend(
        f"{POSTGRES_URL}?schema={schema}&auto_migrate=1"
        "&options=-c%20statement_timeout%3D4321&application_name=offload%20test"
    )
    await backend.open()
    try:
        assert backend._pool is not None
        async with backend._pool.connection() as conn:
            cur = await conn.execute("SELECT current_setting('statement_timeout')")
            assert await cur.fetchone() == ("4321ms",)
            assert conn.info.parameter_status("application_name") == "offload test"
    finally:
        await backend.close()


async def test_unreachable_database_fails_fast_as_backend_unavailable() -> None:
    backend = PostgresBackend("postgresql://postgres@127.0.0.1:1/test?timeout=1")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await backend.open()
    assert time.monotonic() - started < 5
    await backend.close()


# -- recovery ----------------------------------------------------------------------------------


async def test_recovery_write_is_fenced_on_the_lease_it_found(backends: Factory) -> None:
    """A decision made for an expired lease is written only while that lease still stands:
    a job completed, heartbeated or re-leased between the find and the write is left alone."""
    b = await backends()
    channels = Channels(work=b._channel, done=b._done_channel)

    async def find() -> tuple[list[ExpiredJob], float]:
        async with b._conn() as conn:
            decided, now = await find_expired(AsyncQueryConn(conn), b._q, 10)
        assert now is not None
        return decided, now

    async def write(decided: list[ExpiredJob], now: float) -> int:
        async with b._conn() as conn:
            return await write_expired(AsyncQueryConn(conn), b._q, decided, now, channels)

    done, beating, released = await b.enqueue([job(), job(), job()])
    running = {r.id: r for r in await b.claim(claim(lease_s=0.0))}  # expired at once
    stale, found_at = await find()
    assert {d.id for d in stale} == {done.id, beating.id, released.id}
    await b.complete([(lease_of(running[done.id]), Succeeded(None))])
    assert await b.heartbeat([lease_of(running[beating.id])], 30.0) == {beating.id}
    assert await write([d for d in stale if d.id == released.id], found_at) == 1
    w2 = ClaimRequest(queues=("q",), limit=10, worker_id="w2", lease_s=0.0)
    (again,) = await b.claim(w2)  # attempt 2, expired too
    assert again.id == released.id and again.attempt == 2

    # The fence, job by job: done is no longer running and holds no lease; beating holds the
    # same lease, no longer expired; released is expired again, under another attempt.
    (_, now) = await find()  # the database clock, after the re-lease
    assert await write(stale, now) == 0
    finished = await must_get(b, done.id)
    assert finished.state is JobState.SUCCEEDED and finished.errors == ()
    kept = await must_get(b, beating.id)
    assert kept.state is JobState.RUNNING and kept.errors == ()
    assert kept.worker_id == "w" and kept.attempt == 1
    relet = await must_get(b, released.id)
    assert relet.state is JobState.RUNNING and (relet.attempt, relet.worker_id) == (2, "w2")
    assert [(e.attempt, e.worker_id) for e in relet.errors] == [(1, "w")]


async def test_workers_recovering_at_once_put_each_job_back_once(
    backends: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recoverers split the expired jobs between them (batch by batch): each job is put back
    once, with one error recorded, and the counts add up."""
    monkeypatch.setattr("offload.backends.postgres.backend.RECOVER_BATCH", 3)
    b = await backends()
    await b.enqueue([job() for _ in range(20)])
    await b.claim(claim(limit=20, lease_s=0.0))
    assert sum(await asyncio.gather(*(b.recover() for _ in range(4)))) == 20
    back = await b.claim(claim(limit=30))
    assert len(back) == 20 and all(len(r.errors) == 1 for r in back)
    assert await b.recover() == 0


# -- transactional enqueue ---------------------------------------------------------------------


async def test_retry_needs_the_key_free_in_its_own_queue_only(backends: Factory) -> None:
    backend = await backends()
    (old,) = await backend.enqueue([job("qa", key="k")])
    await backend.cancel(old.id)
    await backend.enqueue([job("qb", key="k")])  # the same key, another queue
    again = await backend.requeue(old.id)
    assert again is not None and again.state is JobState.QUEUED
    await backend.cancel(old.id)
    await backend.enqueue([job("qa", key="k")])
    with pytest.raises(InvalidState):
        await backend.requeue(old.id)


async def test_claim_by_ids_ignores_other_queues_and_paused_ones(backends: Factory) -> None:
    backend = await backends()
    a, b, c = await backend.enqueue([job("qa"), job("qb", priority=5), job("qc")])
    await backend.set_paused("qc", True)
    req = ClaimRequest(
        queues=("qa", "qc"), limit=5, worker_id="w", job_ids=(a.id, b.id, c.id, a.id)
    )
    assert [j.id for j in await backend.claim(req)] == [a.id]
    empty = ClaimRequest(queues=("qa", "qb"), limit=5, worker_id="w", job_ids=())
    assert await backend.claim(empty) == []


async def test_run_maintenance_deletes_expired_finished_jobs_once(backends: Factory) -> None:
    backend = await backends(retention=0.0)
    await backend.enqueue([job() for _ in range(3)])
    jobs = await backend.claim(claim())
    await backend.complete([(lease_of(j), Succeeded()) for j in jobs[:2]])
    counts = await asyncio.gather(*(backend.run_maintenance() for _ in range(3)))
    assert sum(counts) == 2  # the advisory lock lets one caller at a time do the work
    assert (await backend.counts())["q"] == {JobState.RUNNING: 1}


async def test_run_maintenance_keeps_jobs_younger_than_the_retention(backends: Factory) -> None:
    backend = await backends()  # the default retention: days
    await backend.enqueue([job()])
    await backend.complete([(lease_of(await claim_one(backend, "q")), Succeeded())])
    assert await backend.run_maintenance() == 0
    assert (await backend.counts())["q"] == {JobState.SUCCEEDED: 1}


async def test_claim_uses_the_waiting_index(backends: Factory, schema: str) -> None:
    backend = await backends()
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f'ANALYZE "{schema}".jobs')
        await conn.execute("SET enable_seqscan = off")  # an empty table would be seq-scanned
        cur = await conn.execute(
            f'EXPLAIN SELECT id FROM "{schema}".jobs WHERE queue = %s '
            "AND state IN ('scheduled', 'queued') AND run_at <= 0 "
            "ORDER BY priority DESC, run_at, seq LIMIT 10",
            ["q"],
        )
        plan = "\n".join(str(r[0]) for r in await cur.fetchall())
    assert "jobs_claim_idx" in plan and "Sort" not in plan
    assert backend.capabilities.transactional and backend.capabilities.notify


# -- waiting for work --------------------------------------------------------------------------


async def listening(backend: PostgresBackend) -> None:
    """Start the backend's LISTEN connection and wait until it listens."""
    await backend.wait_for_work(["q"], 0.0)
    assert backend._work_listener is not None
    await asyncio.wait_for(backend._work_listener.ready.wait(), PROMPT_S)


async def last_statements(schema: str) -> list[str]:
    """The last statement of each connection that worked in ``schema``, but LISTEN."""
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND position(%s in query) > 0 AND query NOT LIKE 'LISTEN%%'",
            [f'"{schema}"'],
        )
        return [row[0] for row in await cur.fetchall()]


async def test_wait_after_a_claim_asks_the_database_nothing(backends: Factory, schema: str) -> None:
    """The claim already told the worker all it needs: a second statement per idle cycle
    doubled the database's work per job."""
    backend = await backends()
    await listening(backend)
    assert await backend.claim(claim()) == []
    await backend.wait_for_work(["q"], 0.05)
    wake_info = backend._q["wake_info"][:200]  # the server keeps the first 1 kB of each
    statements = await last_statements(schema)
    assert statements and not any(s.startswith(wake_info) for s in statements)
    # Without a claim of its own just before, a wait asks the database as ever.
    await backend.wait_for_work(["q"], 0.05)
    assert any(s.startswith(wake_info) for s in await last_statements(schema))


async def test_work_notified_between_claim_and_wait_wakes_at_once(backends: Factory) -> None:
    worker, producer = await backends(), await backends()
    await listening(worker)
    # Created before the claim, this waiter has no claim of its own: it asks the database,
    # then hears the notification that the main wait must not sleep through.
    heard = asyncio.create_task(worker.wait_for_work(["q"], 30.0))
    assert await worker.claim(claim()) == []
    await producer.enqueue([job()])
    await asyncio.wait_for(heard, PROMPT_S)
    started = time.monotonic()
    await asyncio.wait_for(worker.wait_for_work(["q"], 30.0), PROMPT_S)
    assert time.monotonic() - started < PROMPT_S
    assert len(await worker.claim(claim())) == 1


async def test_wait_after_a_full_claim_returns_at_once(backends: Factory) -> None:
    backend = await backends()
    await backend.enqueue([job(), job()])
    await listening(backend)
    assert len(await backend.claim(claim(limit=1))) == 1
    await asyncio.wait_for(backend.wait_for_work(["q"], 30.0), PROMPT_S)


@pytest.mark.parametrize("queues", [("q",), ("q", "other")])
async def test_wait_after_a_claim_wakes_when_a_scheduled_job_falls_due(
    backends: Factory, queues: tuple[str, ...]
) -> None:
    backend = await backends()
    await backend.enqueue([job(delay_s=0.5), job("paused", delay_s=0.1)])
    await backend.set_paused("paused", True)  # its job must not cut the wait short
    await listening(backend)
    request = ClaimRequest(queues=(*queues, "paused"), limit=5, worker_id="w", lease_s=30.0)
    if await backend.claim(request):
        pytest.skip("the machine took longer than the job's delay to get here")
    started = time.monotonic()
    await asyncio.wait_for(backend.wait_for_work(request.queues, 30.0), PROMPT_S)
    assert time.monotonic() - started > 0.2  # slept until the job was due, not woken early
    assert len(await backend.claim(request)) == 1


async def test_a_claims_commit_setting_stays_in_its_own_transaction(backends: Factory) -> None:
    """A claim commits without waiting for the disk; the enqueues and completions that use
    the same pooled connection after it must still wait (they are what must not be lost)."""
    backend = await backends(pool_size=1)
    assert backend._pool is not None

    async def setting() -> str:
        assert backend._pool is not None
        async with backend._pool.connection() as conn:
            row = await (await conn.execute("SHOW synchronous_commit")).fetchone()
            assert row is not None
            return str(row[0])

    before = await setting()
    await backend.enqueue([job()])
    assert len(await backend.claim(claim())) == 1
    assert await backend.claim(claim()) == []
    assert await setting() == before != "off"


async def test_a_connection_the_server_closed_is_replaced_on_checkout(backends: Factory) -> None:
    """The pool checks connections without a round trip; a dead one must still be caught."""
    backend = await backends()
    assert backend._pool is not None
    async with backend._pool.connection() as conn:
        pid = conn.info.backend_pid
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
    assert await backend.counts() == {}  # not BackendUnavailable


# -- outage ------------------------------------------------------------------------------------


def _cluster() -> tuple[str, str] | None:
    etc = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0 or not etc.is_dir():
        return None
    versions = sorted(p.name for p in etc.iterdir())
    return (versions[-1], "main") if versions else None


async def test_jobs_survive_a_database_restart(backends: Factory) -> None:
    """Drain several thousand jobs while PostgreSQL restarts: none lost, resumed promptly."""
    cluster = _cluster()
    if cluster is None:
        pytest.skip("needs root and pg_ctlcluster to restart PostgreSQL")
    backend = await backends()
    total = 3000
    for _ in range(total // 1000):
        await backend.enqueue([job() for _ in range(1000)])
    done = 0
    restarted_at: float | None = None
    resumed_after: float | None = None
    restart: asyncio.Task[None] | None = None

    async def do_restart() -> None:
        nonlocal restarted_at
        cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"]
        await asyncio.to_thread(subprocess.run, cmd, check=True, capture_output=True)
        restarted_at = time.monotonic()

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            jobs = await backend.claim(claim(limit=20, lease_s=2.0))
            if not jobs:
                if ((await backend.counts()).get("q") or {}).get(JobState.SUCCEEDED) == total:
                    break
                await backend.recover()  # a claim whose reply was lost in the restart
                await asyncio.sleep(0.2)
                continue
            if restarted_at is not None and resumed_after is None:
                resumed_after = time.monotonic() - restarted_at
            await asyncio.sleep(0.02)  # the jobs' work: the run outlasts the restart
            results = [(lease_of(j), Succeeded()) for j in jobs]
            while True:
                try:
                    await backend.complete(results)  # a repeat is fenced off: safe to retry
                    break
                except BackendUnavailable:
                    await asyncio.sleep(0.1)
            done += len(jobs)
        except BackendUnavailable:
            await asyncio.sleep(0.1)
        if restart is None and done >= total // 3:
            restart = asyncio.create_task(do_restart())
    assert restart is not None
    await restart
    counts = await backend.counts()
    assert counts["q"] == {JobState.SUCCEEDED: total}
    assert resumed_after is not None and resumed_after < 10


async def test_gated_claims_are_serialised_across_queues(backends: Factory) -> None:
    """A limit may span queues (a task's rate, enqueued to two queues): while one gated claim
    is uncommitted, another (of another queue) waits for it, then sees its job running. Without
    the advisory lock the second would take the bucket's other job at once."""
    from offload.backends.postgres.enqueue import AsyncQueryConn
    from offload.backends.postgres.queries import lock_namespace
    from offload.job import NewJob, new_job_id

    b = await backends()
    shared = ("1/0/test:shared",)
    await b.enqueue(
        [
            NewJob(id=new_job_id(), task="t", queue=q, args=b"{}", limits=shared)
            for q in ("qa", "qb")
        ]
    )
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as first:
        params = {
            "queues": ["qa"],
            "ids": None,
            "limit": 5,
            "ns": lock_namespace(b.schema),
            "worker_id": "w1",
            "lease_s": 30.0,
            "limited_only": False,
        }
        rows = await AsyncQueryConn(first).rows(b._q["claim_gated"], params)  # not committed
        assert [r[2] for r in rows if r[0] is not None] == ["qa"]
        second = asyncio.create_task(b.claim(ClaimRequest(queues=("qb",), limit=5, worker_id="w2")))
        await asyncio.sleep(0.3)
        assert not second.done()  # waiting for the first gated claim to end
        await first.commit()
    assert await asyncio.wait_for(second, 10) == []  # the bucket is held by qa's job
