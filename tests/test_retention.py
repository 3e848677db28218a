"""Retention: the policy and its URL options, deletion past a retention on every engine (in
bounded batches), and the SQLite file giving its space back. What needs no configuration
(defaults keep fresh jobs, purge) is in the conformance suite."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from offload.backends import from_url
from offload.backends.base import Backend
from offload.backends.beanstalkd import StoredBeanstalkBackend
from offload.backends.memory import backend as memory_backend
from offload.backends.postgres import steering as postgres_steering
from offload.backends.redis import inspection as redis_inspection
from offload.backends.retention import DAY_S, Retention, parse_retention
from offload.backends.sqlite import connection as sqlite_connection
from offload.backends.sqlite import options as sqlite_options
from offload.backends.sqlite import queries as sqlite_queries
from offload.backends.sqlite import retention as sqlite_retention
from offload.errors import ConfigurationError
from offload.job import KEPT_FOREVER_S, JobRetention, JobState
from offload.outcome import Cancelled, Dead, Succeeded
from offload.testing.conformance.retention import own
from offload.testing.helpers import claim_request, finish, lease_of, must_get, new_job
from tests.services import BEANSTALKD_URL, backend_url, require_beanstalkd, unique_name

KINDS = ["memory", "sqlite", "postgres", "redis", "redis_cluster", "rabbitmq", "beanstalkd"]
# Succeeded jobs go at once, dead ones after the default (days), cancelled ones never.
OPTIONS = "retention_succeeded=0&retention_cancelled=forever"

# -- the policy -------------------------------------------------------------------------------


def test_defaults_keep_succeeded_jobs_3_days_and_failures_14() -> None:
    assert parse_retention({}) == Retention(3 * DAY_S, 14 * DAY_S, 14 * DAY_S)


def test_one_option_for_all_states_and_one_per_state_wins() -> None:
    policy = parse_retention({"retention": "12h", "retention_dead": "2w"})
    assert policy == Retention(12 * 3600.0, 14 * DAY_S, 12 * 3600.0)
    assert parse_retention({"retention": 90}).pruned() == [
        (JobState.SUCCEEDED, 90.0),
        (JobState.DEAD, 90.0),
        (JobState.CANCELLED, 90.0),
    ]
    forever = parse_retention({"retention": "forever", "retention_succeeded": "1.5"})
    assert forever.pruned() == [(JobState.SUCCEEDED, 1.5)]
    assert forever.longest_s() is None and Retention().longest_s() == 14 * DAY_S


@pytest.mark.parametrize("bad", ["-1", "soon", "3 days", "1e3x", "nan", True])
def test_a_bad_retention_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="retention of succeeded jobs"):
        parse_retention({"retention_succeeded": bad})


@pytest.mark.parametrize(
    "url",
    [
        "memory://?retention=-5",
        "memory://?retention_done=1",
        "sqlite:///x.db?retention_dead=later",
        "redis://db?retention=-1",
        "postgresql://db/app?retention_cancelled=x",
    ],
)
def test_every_engine_refuses_a_bad_retention_option(url: str) -> None:
    with pytest.raises(ConfigurationError, match="retention"):
        from_url(url)


# -- deletion past the retention, every engine ---------------------------------------------------


def with_options(url: str, options: str) -> str:
    """``url`` with retention ``options``; a broker's go to its store, inside ``store=``."""
    if "&store=" in url:
        head, store = url.split("&store=", 1)
        return f"{head}&store={quote(f'{store}?{options}', safe='')}"
    return f"{url}{'&' if '?' in url else '?'}{options}"


@pytest.fixture(params=KINDS)
def retaining_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each kind's URL with a retention that deletes succeeded jobs at once (its data is
    removed afterwards, outside the test's event loop)."""
    if request.param == "memory":
        yield f"memory://?{OPTIONS}"
        return
    if request.param == "beanstalkd":
        require_beanstalkd()
        prefix = unique_name("offload_t")
        yield with_options(
            f"{BEANSTALKD_URL}?prefix={prefix}&store=sqlite:///{tmp_path}/s.db", OPTIONS
        )
        return
    with backend_url(request.param, tmp_path) as url:
        yield with_options(url, OPTIONS)


@pytest.fixture
async def retaining(retaining_url: str) -> AsyncIterator[Backend]:
    backend = from_url(retaining_url)
    await backend.open()
    yield backend
    tubes = sorted(backend.used_tubes()) if isinstance(backend, StoredBeanstalkBackend) else []
    await backend.close()
    if isinstance(backend, StoredBeanstalkBackend) and tubes:  # they outlive it: delete them
        await backend.open()
        await backend.delete_tubes(tubes)
        await backend.close()


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> int:
    """Batches of 2 rows, so that a handful of jobs takes several: the loop is exercised."""
    for module in (memory_backend, sqlite_retention, postgres_steering, redis_inspection):
        monkeypatch.setattr(module, "PRUNE_BATCH", 2)
    return 2


async def test_run_maintenance_deletes_past_the_retention_in_batches(
    retaining: Backend, small_batches: int
) -> None:
    backend = retaining
    succeeded = [await finish(backend, Succeeded(b"1")) for _ in range(5)]
    dead = await finish(backend, Dead("broken"))
    cancelled = await finish(backend, Cancelled("no"))
    (running,) = await backend.enqueue([new_job()])
    await backend.claim(claim_request())
    assert await backend.run_maintenance() == 5  # 3 batches of at most 2
    assert [await backend.get(r.id) for r in succeeded] == [None] * 5
    assert await must_get(backend, dead.id) == dead  # 14 days by default
    assert await must_get(backend, cancelled.id) == cancelled  # forever
    assert (await must_get(backend, running.id)).state is JobState.RUNNING
    assert await backend.run_maintenance() == 0


async def test_a_task_retention_longer_than_the_backends_keeps_its_jobs(
    retaining: Backend,
) -> None:
    backend = retaining  # succeeded jobs go at once (the URL's retention_succeeded=0)
    gone = [
        await finish(backend, Succeeded()),
        await finish(backend, Succeeded(), own(JobRetention(dead_s=3600.0))),  # not its state
    ]
    kept = [
        await finish(backend, Succeeded(), own(JobRetention(succeeded_s=3600.0))),
        await finish(backend, Succeeded(), own(JobRetention(KEPT_FOREVER_S, None, None))),
    ]
    assert await backend.run_maintenance() == len(gone)
    assert [await backend.get(r.id) for r in gone] == [None] * len(gone)
    for rec in kept:
        assert await must_get(backend, rec.id) == rec


async def test_a_task_retention_does_not_stall_the_backends_pruning(
    retaining: Backend, small_batches: int
) -> None:
    """Jobs kept longer by their own retention, older than the backend's age, do not fill the
    batches of the backend's pruning (which would then stop at the first full batch of them,
    or walk them all on every pass)."""
    backend = retaining
    longer = [
        await finish(backend, Succeeded(), own(JobRetention(succeeded_s=3600.0)))
        for _ in range(3 * small_batches)
    ]
    default = [await finish(backend, Succeeded()) for _ in range(3)]
    assert await backend.run_maintenance() == len(default)
    assert [await backend.get(r.id) for r in default] == [None] * len(default)
    assert all([await backend.get(r.id) is not None for r in longer])


async def test_purge_deletes_across_batches(retaining: Backend, small_batches: int) -> None:
    backend = retaining
    dead = [await finish(backend, Dead("x"), new_job(queue="q1")) for _ in range(5)]
    other = await finish(backend, Dead("x"), new_job(queue="q2"))
    assert await backend.purge([JobState.DEAD], queue="q1") == 5
    assert [await backend.get(r.id) for r in dead] == [None] * 5
    assert await must_get(backend, other.id) == other


async def test_a_version_7_sqlite_file_is_upgraded_to_own_retention(tmp_path: Path) -> None:
    path = tmp_path / "v7.db"
    backend = from_url(f"sqlite:///{path}?retention_succeeded=0")
    await backend.open()
    await backend.close()
    with sqlite3.connect(path, isolation_level=None) as raw:  # as version 7 made it
        raw.execute("DROP INDEX offload_jobs_finished_by_own")
        raw.execute("DROP INDEX offload_jobs_keep_until")
        for state in ("succeeded", "dead", "cancelled"):
            raw.execute(f"ALTER TABLE offload_jobs DROP COLUMN keep_{state}_s")
        raw.execute(
            "CREATE INDEX offload_jobs_finished ON offload_jobs (state, finished_at)"
            " WHERE finished_at IS NOT NULL"
        )
        raw.execute("PRAGMA user_version = 7")
        raw.execute(
            "INSERT INTO offload_jobs (id, task, queue, args, state, priority, max_attempts,"
            " run_at, created_at, finished_at) VALUES ('old', 't', 'default', X'7b7d',"
            " 'succeeded', 0, 3, 1, 1, 1)"
        )
    backend = from_url(f"sqlite:///{path}?retention_succeeded=0")
    await backend.open()
    try:
        assert (await must_get(backend, "old")).retention is None
        longer = await finish(backend, Succeeded(), own(JobRetention(succeeded_s=3600.0)))
        assert await backend.run_maintenance() == 1  # the old job, by the URL's retention
        assert await must_get(backend, longer.id) == longer
    finally:
        await backend.close()
    with sqlite3.connect(path) as raw:
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"offload_jobs_finished_by_own", "offload_jobs_keep_until"} <= names
    assert "offload_jobs_finished" not in names


def test_sqlite_prunes_through_the_indexes_without_a_scan(tmp_path: Path) -> None:
    """The backend's pruning seeks past the jobs with their own retention (the other half of
    the finished index), and their own pruning reads only the due ones (the expiry index)."""
    path, opts = sqlite_options.parse_url(f"sqlite:///{tmp_path / 'plan.db'}", {})
    raw = sqlite_connection.connect(path, opts, write=True)  # the schema, upgrades included
    try:
        params = {"state": "succeeded", "cutoff": 1.0, "queue": None, "batch": 1, "now": 1.0}
        plans = {
            name: " ".join(r[3] for r in raw.execute(f"EXPLAIN QUERY PLAN {q}", params))
            for name, q in sqlite_queries.Q.items()
            if name in ("prune_batch", "prune_own_batch", "purge_batch")
        }
    finally:
        raw.close()
    seek = "USING INDEX offload_jobs_finished_by_own (state=? AND <expr>=? AND finished_at"
    assert seek in plans["prune_batch"] and seek in plans["purge_batch"]
    assert "USING INDEX offload_jobs_keep_until (<expr><" in plans["prune_own_batch"]


# -- SQLite gives the space back ------------------------------------------------------------


def pragma(path: Path, name: str) -> int:
    with sqlite3.connect(path) as raw:
        return int(raw.execute(f"PRAGMA {name}").fetchone()[0])


async def fill_and_prune(path: Path, jobs: int) -> int:
    """Run ``jobs`` 4 KB jobs (and any already queued) to success, prune them all; return
    the pages the file then has."""
    backend = from_url(f"sqlite:///{path}?retention_succeeded=0")
    await backend.open()
    try:
        pad = b'{"pad": "' + b"x" * 4000 + b'"}'
        await backend.enqueue([new_job(args=pad) for _ in range(jobs)])
        while claimed := await backend.claim(claim_request(limit=200)):
            await backend.complete([(lease_of(j), Succeeded()) for j in claimed])
        assert await backend.run_maintenance() >= jobs
    finally:
        await backend.close()
    assert pragma(path, "freelist_count") == 0
    return pragma(path, "page_count")


async def test_a_new_sqlite_file_shrinks_back_after_retention(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    empty = await fill_and_prune(path, 1)
    assert pragma(path, "auto_vacuum") == 2  # INCREMENTAL, set before the tables existed
    assert await fill_and_prune(path, 500) <= empty + 8  # not the ~600 pages it held


def file_sizes(path: Path) -> tuple[int, int]:
    """The SQLite file's size and its WAL's (0 when it has none)."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size, wal.stat().st_size if wal.exists() else 0


async def test_the_sqlite_file_shrinks_while_the_backend_stays_open(tmp_path: Path) -> None:
    """The pages given back leave the file itself, not only its page count: in WAL mode that
    takes a checkpoint, which the maintenance pass runs itself (SQLite's own waits for the
    next 1,000 pages written). A reader in the way makes it skip, never wait or fail."""
    path = tmp_path / "open.db"
    backend = from_url(f"sqlite:///{path}?retention_succeeded=0")
    await backend.open()
    try:
        pad = b'{"pad": "' + b"x" * 4000 + b'"}'
        await backend.enqueue([new_job(args=pad) for _ in range(500)])
        while claimed := await backend.claim(claim_request(limit=200)):
            await backend.complete([(lease_of(j), Succeeded()) for j in claimed])
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM offload_jobs").fetchone()  # holds its snapshot
        assert await backend.run_maintenance() == 500  # returns with the reader in the way
        held = file_sizes(path)
        reader.execute("COMMIT")
        reader.close()
        await backend.enqueue([new_job(args=pad) for _ in range(50)])
        while claimed := await backend.claim(claim_request(limit=200)):
            await backend.complete([(lease_of(j), Succeeded()) for j in claimed])
        assert await backend.run_maintenance() == 50
        main, wal = file_sizes(path)
        assert main < 150_000, (held, main)  # 330 KB without the checkpoint
        assert wal == 0, wal
    finally:
        await backend.close()


async def test_an_older_sqlite_file_is_converted_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    backend = from_url(f"sqlite:///{path}")
    await backend.open()
    (kept,) = await backend.enqueue([new_job()])
    await backend.close()
    with sqlite3.connect(path, isolation_level=None) as raw:  # as a version 2 file was made
        raw.execute("PRAGMA auto_vacuum = NONE")
        raw.execute("VACUUM")
        raw.execute("PRAGMA user_version = 2")
    assert pragma(path, "auto_vacuum") == 0
    backend = from_url(f"sqlite:///{path}")
    await backend.open()
    try:
        assert (await must_get(backend, kept.id)).state is JobState.QUEUED
    finally:
        await backend.close()
    assert pragma(path, "auto_vacuum") == 2
    assert await fill_and_prune(path, 300) < 40
