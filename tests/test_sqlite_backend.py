"""The sqlite:// backend: its own guarantees (files, threads, processes, untrusted rows)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest

from offload.backends import from_url
from offload.backends.sqlite import SQLiteBackend
from offload.backends.sqlite.connection import NoFlush
from offload.backends.sqlite.queries import SCHEMA_VERSION
from offload.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidState,
    QueueFull,
    ValidationError,
)
from offload.job import ClaimRequest, JobFilter, JobState, NewJob, new_job_id
from offload.outcome import RetryAt, Succeeded
from offload.testing import BackendConformance, MakeBackend
from tests import sqlite_support
from tests.sqlite_support import Factory, claim, job, offload_threads, open_fds_on

T = TypeVar("T")

backends = sqlite_support.backends  # the fixture: a factory of backends on one per-test file


class TestSQLiteConformance(BackendConformance):
    @pytest.fixture
    async def make_backend(self, tmp_path: Path) -> AsyncIterator[MakeBackend]:
        opened: list[SQLiteBackend] = []

        async def make() -> SQLiteBackend:
            backend = SQLiteBackend(f"sqlite:///{tmp_path}/conformance.db")
            await backend.open()
            opened.append(backend)
            return backend

        yield make
        for backend in opened:
            await backend.close()


async def test_round_trip_and_claim_order(backends: Factory) -> None:
    b = await backends()
    low = job(priority=1)
    high = job(priority=5)
    later = job(delay_s=60)
    recs = await b.enqueue([low, high, later])
    assert [r.id for r in recs] == [low.id, high.id, later.id]
    assert [r.state for r in recs] == [JobState.QUEUED, JobState.QUEUED, JobState.SCHEDULED]
    got = await b.claim(claim(limit=10))
    assert [r.id for r in got] == [high.id, low.id]
    assert all(r.state is JobState.RUNNING and r.attempt == 1 for r in got)
    lease = got[0].lease
    assert lease is not None
    await b.complete([(lease, Succeeded(b"42"))])
    done = await b.get(high.id)
    assert done is not None and done.state is JobState.SUCCEEDED and done.result == b"42"


async def test_claim_over_several_queues_keeps_global_order(backends: Factory) -> None:
    b = await backends()
    a1, b1, a2 = job("a", priority=1), job("b", priority=3), job("a", priority=2)
    await b.enqueue([a1, b1, a2])
    req = ClaimRequest(queues=("a", "b"), limit=2, worker_id="w")
    assert [r.id for r in await b.claim(req)] == [b1.id, a2.id]


async def test_retry_appends_error_and_stale_completion_is_ignored(backends: Factory) -> None:
    b = await backends()
    (rec,) = await b.enqueue([job()])
    (running,) = await b.claim(claim())
    assert running.lease is not None
    await b.complete([(running.lease, RetryAt(delay_s=0.0, error="boom"))])
    await b.complete([(running.lease, Succeeded(None))])  # stale: the lease has moved on
    after = await b.get(rec.id)
    assert after is not None and after.state is JobState.SCHEDULED
    assert [e.error for e in after.errors] == ["boom"]


async def test_dedup_and_queue_limit(backends: Factory) -> None:
    b = await backends()
    first = job(key="k")
    recs = await b.enqueue([first, job(key="k")])
    assert [r.id for r in recs] == [first.id, first.id]
    (again,) = await b.enqueue([job(key="k")])
    assert again.id == first.id
    with pytest.raises(QueueFull):
        await b.enqueue([job(), job()], limits={"q": 2})
    assert (await b.counts())["q"] == {JobState.QUEUED: 1}


async def test_claim_by_job_ids_past_the_variable_limit(backends: Factory) -> None:
    b = await backends()
    mine, elsewhere, rest = await b.enqueue([job(priority=1), job("other"), job(priority=5)])
    # more ids than SQLite takes bound variables (32,766): they travel as one JSON parameter
    ids = (*(new_job_id() for _ in range(40_000)), mine.id, elsewhere.id, mine.id)
    req = ClaimRequest(queues=("q",), limit=len(ids), worker_id="w", job_ids=ids)
    await b.set_paused("q", True)
    assert await b.claim(req) == []
    await b.set_paused("q", False)
    assert [r.id for r in await b.claim(req)] == [mine.id]  # once, though named twice
    assert await b.claim(msgspec.structs.replace(req, job_ids=())) == []
    assert [r.id for r in await b.claim(claim())] == [rest.id]


async def test_version_2_file_gains_headers_and_progress(backends: Factory, tmp_path: Path) -> None:
    b = await backends()
    (old,) = await b.enqueue([job("qa")])
    await b.close()
    raw = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    try:  # what version 2 left: no headers or progress columns
        raw.execute("ALTER TABLE offload_jobs DROP COLUMN headers")
        raw.execute("ALTER TABLE offload_jobs DROP COLUMN progress")
        raw.execute("PRAGMA user_version = 2")
        b = await backends()
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        raw.close()
    got = await b.get(old.id)
    assert got is not None and got.headers == {} and got.progress is None
    new = NewJob(id=new_job_id(), task="t", queue="qa", args=b"{}", headers={"a": "1"})
    (rec,) = await b.enqueue([new])
    assert (await b.get(rec.id)) == rec and rec.headers == {"a": "1"}


async def test_version_1_file_is_upgraded_to_keys_scoped_by_queue(
    backends: Factory, tmp_path: Path
) -> None:
    b = await backends()
    (held,) = await b.enqueue([job("qa", key="k")])
    await b.close()
    raw = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    try:  # what version 1 left: one active job per key across all queues
        raw.execute("DROP INDEX offload_jobs_active_queue_key")
        raw.execute(
            "CREATE UNIQUE INDEX offload_jobs_active_key ON offload_jobs (key)"
            " WHERE key IS NOT NULL AND state IN ('scheduled', 'queued', 'running')"
        )
        for index in ("offload_jobs_fair_waiting", "offload_jobs_waiting"):
            raw.execute(f"DROP INDEX {index}")  # nor the fair keys of version 8
        raw.execute(
            "CREATE INDEX offload_jobs_waiting ON offload_jobs (queue, priority DESC, run_at, seq)"
            " WHERE state IN ('scheduled', 'queued')"
        )
        raw.execute("ALTER TABLE offload_jobs DROP COLUMN fair")
        raw.execute("DROP TABLE offload_fair_turns")
        for index in ("offload_jobs_limited_waiting", "offload_jobs_limited_running"):
            raw.execute(f"DROP INDEX {index}")  # nor had it the limits of version 5
        raw.execute("ALTER TABLE offload_jobs DROP COLUMN limits")
        raw.execute("PRAGMA user_version = 1")
        b = await backends()
        indexes = {n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        raw.close()
    assert "offload_jobs_active_key" not in indexes and "offload_jobs_active_queue_key" in indexes
    assert "offload_jobs_fair_waiting" in indexes
    same, other = await b.enqueue([job("qa", key="k"), job("qb", key="k")])
    assert same.id == held.id and other.id != held.id
    await b.cancel(held.id)
    again = await b.requeue(held.id)  # qb's job holds "k" only in qb
    assert again is not None and again.state is JobState.QUEUED
    (dup,) = await b.enqueue([job("qa", key="k")])
    assert dup.id == held.id


async def test_file_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(ConfigurationError, match="schema version 99"):
        await SQLiteBackend(f"sqlite:///{path}").open()
    assert offload_threads() == []


async def test_group_commit_isolates_a_failing_request(backends: Factory) -> None:
    b = await backends()
    ok = [b.enqueue([job("a")]) for _ in range(20)]
    full = b.enqueue([job("b"), job("b")], limits={"b": 1})
    results = await asyncio.gather(*ok, full, *ok[:0], return_exceptions=True)
    assert isinstance(results[-1], QueueFull)
    counts = await b.counts()
    assert counts["a"] == {JobState.QUEUED: 20} and "b" not in counts


async def test_cancel_retry_delete_purge(backends: Factory) -> None:
    b = await backends()
    j1, j2 = job(), job()
    await b.enqueue([j1, j2])
    cancelled = await b.cancel(j1.id)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    again = await b.requeue(j1.id)
    assert again is not None and again.state is JobState.QUEUED and again.attempt == 0
    with pytest.raises(InvalidState):
        await b.requeue(j2.id)
    assert await b.cancel("nope") is None
    (running,) = await b.claim(claim(limit=1))
    assert await b.delete([running.id]) == 0
    assert running.lease is not None
    await b.complete([(running.lease, Succeeded(None))])
    with pytest.raises(ValueError):
        await b.purge([JobState.QUEUED])
    assert await b.purge([JobState.SUCCEEDED]) == 1
    assert await b.purge([JobState.SUCCEEDED], older_than_s=3600) == 0


async def test_list_jobs_pages_with_cursor_and_filters(backends: Factory) -> None:
    b = await backends()
    jobs = [NewJob(id=new_job_id(), task="t", queue="q", args=b'{"n": %d}' % i) for i in range(7)]
    for j in jobs:
        await b.enqueue([j])  # distinct created_at
    seen: list[str] = []
    cursor = None
    while True:
        page = await b.list_jobs(JobFilter(limit=3, cursor=cursor))
        seen += [r.id for r in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [j.id for j in reversed(jobs)]
    hit = await b.list_jobs(JobFilter(args_contains='"n": 4'))
    assert [r.id for r in hit.jobs] == [jobs[4].id]
    with pytest.raises(ValueError):
        await b.list_jobs(JobFilter(cursor="!!"))


async def test_pause_and_workers(backends: Factory) -> None:
    from offload.job import WorkerInfo

    b = await backends()
    await b.enqueue([job()])
    await b.set_paused("q", True)
    assert await b.paused_queues() == {"q"}
    assert await b.claim(claim()) == []
    await b.set_paused("q", False)
    assert len(await b.claim(claim())) == 1
    info = WorkerInfo(
        id="w1", host="h", pid=1, queues=("q",), concurrency=4, busy=0, started_at=1.0
    )
    await b.report_worker(info, ttl_s=30)
    (seen,) = await b.workers()
    assert seen.id == "w1" and seen.last_seen_at > 0
    await b.remove_worker("w1")
    assert await b.workers() == []


async def test_two_instances_claiming_concurrently_never_double_claim(backends: Factory) -> None:
    one, two = await backends(), await backends()
    await one.enqueue([job() for _ in range(500)])

    async def drain(b: SQLiteBackend, worker: str) -> list[str]:
        ids: list[str] = []
        while got := await b.claim(claim(limit=7, worker=worker)):
            ids += [r.id for r in got]
        return ids

    results = await asyncio.gather(*(drain(b, f"w{i}") for i in range(4) for b in (one, two)))
    ids = [i for r in results for i in r]
    assert len(ids) == 500 and len(set(ids)) == 500


_CLAIMER = """
import asyncio, json, sys
from offload.backends.sqlite import SQLiteBackend
from offload.job import ClaimRequest

async def main():
    b = SQLiteBackend(sys.argv[1])
    await b.open()
    print("ready", flush=True)
    sys.stdin.readline()  # start together, so that the claims really interleave
    ids = []
    req = ClaimRequest(queues=("q",), limit=2, worker_id=sys.argv[2])
    while got := await b.claim(req):
        ids += [r.id for r in got]
    await b.close()
    print(json.dumps(ids), flush=True)

asyncio.run(main())
"""


async def test_two_processes_never_double_claim(backends: Factory) -> None:
    b = await backends()
    await b.enqueue([job() for _ in range(2000)])
    procs = []
    for i in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLAIMER, b.url, f"p{i}",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        procs.append(proc)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    outs = [json.loads((await p.communicate())[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ids = outs[0] + outs[1]
    assert len(ids) == 2000 and len(set(ids)) == 2000
    assert outs[0] and outs[1], "both processes should have claimed some jobs"


async def test_wait_for_work_wakes_on_another_instance(backends: Factory) -> None:
    waiting, producer = await backends(), await backends()
    started = time.monotonic()
    waiter = asyncio.create_task(waiting.wait_for_work(["q"], timeout_s=10))
    await asyncio.sleep(0.05)  # let the waiter read the file's state first
    await producer.enqueue([job()])
    await asyncio.wait_for(waiter, timeout=2)
    assert time.monotonic() - started < 2


async def test_wait_for_work_returns_when_a_scheduled_job_is_due(backends: Factory) -> None:
    b = await backends()
    await b.enqueue([job(delay_s=0.2)])
    started = time.monotonic()
    await b.wait_for_work(["q"], timeout_s=10)
    assert 0.1 < time.monotonic() - started < 2


async def test_wait_done_is_woken_by_completion(backends: Factory) -> None:
    b = await backends()
    (rec,) = await b.enqueue([job()])
    waiter = asyncio.create_task(b.wait_done(rec.id, timeout_s=10))
    (running,) = await b.claim(claim())
    assert running.lease is not None
    await b.complete([(running.lease, Succeeded(b"1"))])
    done = await asyncio.wait_for(waiter, timeout=2)
    assert done is not None and done.state is JobState.SUCCEEDED
    assert await b.wait_done("missing", timeout_s=0.01) is None


async def test_undecodable_rows_go_dead_on_claim_and_are_skipped_in_reads(
    backends: Factory, tmp_path: Path
) -> None:
    b = await backends()
    good = job()
    await b.enqueue([job(), good])
    raw = sqlite3.connect(tmp_path / "jobs.db")
    with raw:
        # a broken errors column on a claimable job, and a job whose state is not a JobState
        raw.execute("UPDATE offload_jobs SET errors = '{not json' WHERE id != ?", (good.id,))
        raw.execute(
            "INSERT INTO offload_jobs (id, task, queue, args, state, priority, max_attempts, "
            "run_at, created_at) VALUES ('weird', 't', 'q', x'00', 'exploded', 0, 3, 0, 0)"
        )
    raw.close()
    got = await b.claim(claim())
    assert [r.id for r in got] == [good.id]
    page = await b.list_jobs(JobFilter())
    assert good.id in [r.id for r in page.jobs] and "weird" not in [r.id for r in page.jobs]
    assert await b.get("weird") is None
    counts = (await b.counts())["q"]
    assert counts == {JobState.DEAD: 1, JobState.RUNNING: 1}  # the odd state is skipped
    (buried,) = (await b.list_jobs(JobFilter(state=JobState.DEAD))).jobs
    assert buried.error is not None and "undecodable" in buried.error and buried.errors == ()


def test_url_and_options() -> None:
    b = SQLiteBackend("sqlite:///rel.db?synchronous=normal&busy_timeout_ms=100")
    assert b.synchronous == "NORMAL" and b.path == os.path.abspath("rel.db")
    assert SQLiteBackend("sqlite:////tmp/x.db").synchronous == "FULL"
    assert SQLiteBackend("sqlite:////tmp/x.db", synchronous="normal").synchronous == "NORMAL"
    assert isinstance(from_url("sqlite:////tmp/x.db"), SQLiteBackend)
    for bad in ("sqlite://", "sqlite:///:memory:", "sqlite:////x.db?synchronous=off"):
        with pytest.raises(ConfigurationError):
            SQLiteBackend(bad)
    with pytest.raises(ConfigurationError):
        SQLiteBackend("sqlite:////x.db?colour=blue")


async def test_synchronous_pragma_applied(backends: Factory) -> None:
    full, normal = await backends(), await backends(synchronous="normal")
    read = "PRAGMA synchronous"
    assert await full._write(lambda c: c.execute(read).fetchone()[0]) == 2
    assert await normal._write(lambda c: c.execute(read).fetchone()[0]) == 1


async def test_claims_and_heartbeats_commit_without_an_fsync(backends: Factory) -> None:
    """At synchronous=full, a batch of only claims and heartbeats commits at NORMAL (no
    fsync: a lost claim only gives the job back); a batch holding any other write, at FULL.
    At synchronous=normal nothing changes."""
    read = "PRAGMA synchronous"
    b = await backends()
    writer = b._writer
    assert writer is not None
    assert await b._write(NoFlush(lambda c: c.execute(read).fetchone()[0])) == 1
    assert await b._write(lambda c: c.execute(read).fetchone()[0]) == 2  # restored after

    # One batch holding both kinds: both are queued (submit queues at once) while the writer
    # is held busy by a first request, so it takes them together once that one ends.
    gate = threading.Event()
    held = writer.submit(lambda c: gate.wait(5))
    both = [writer.submit(NoFlush(lambda c: c.execute(read).fetchone()[0])), writer.submit(
        lambda c: c.execute(read).fetchone()[0])]  # fmt: skip
    gate.set()
    assert await held and await asyncio.gather(*both) == [2, 2]

    before = writer.relaxed_commits
    await b.enqueue([job()])
    assert writer.relaxed_commits == before  # an enqueue is flushed
    [leased] = await b.claim(claim())
    assert writer.relaxed_commits == before + 1 and leased.lease is not None
    assert await b.heartbeat([leased.lease], 30.0) == {leased.id}
    assert writer.relaxed_commits == before + 2
    await b.complete([(leased.lease, Succeeded())])
    assert writer.relaxed_commits == before + 2  # a completion is flushed

    normal = await backends(synchronous="normal")
    assert normal._writer is not None
    await normal.enqueue([job()])
    await normal.claim(claim())
    assert normal._writer.relaxed_commits == 0


async def test_unopenable_path_is_backend_unavailable(tmp_path: Path) -> None:
    b = SQLiteBackend(f"sqlite:///{tmp_path}/no/such/dir/jobs.db")
    with pytest.raises(BackendUnavailable, match="cannot open"):
        await b.open()
    assert offload_threads() == []
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(BackendUnavailable):
        await SQLiteBackend(f"sqlite:///{tmp_path}/junk.db").open()
    with pytest.raises(BackendUnavailable, match="not open"):
        await b.get("x")


async def test_locked_file_is_backend_unavailable(backends: Factory, tmp_path: Path) -> None:
    b = await backends(busy_timeout_ms=50)
    raw = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendUnavailable, match="locked"):
            await b.enqueue([job()])
    finally:
        raw.execute("ROLLBACK")
        raw.close()
    assert len(await b.enqueue([job()])) == 1  # and it recovers once the lock is gone


async def test_a_write_waits_for_another_connections_lock_then_goes_on(
    backends: Factory, tmp_path: Path
) -> None:
    # The writer waits for the lock itself (its connection's busy timeout is 0): a lock held
    # for a while by another process delays an enqueue, never fails it.
    b = await backends(busy_timeout_ms=5000)
    raw = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    try:
        pending = asyncio.ensure_future(b.enqueue([job()]))
        await asyncio.sleep(0.2)
        assert not pending.done()
    finally:
        raw.execute("ROLLBACK")
        raw.close()
    assert len(await asyncio.wait_for(pending, 5)) == 1


async def test_close_leaves_no_thread_and_no_file_handle(tmp_path: Path) -> None:
    b = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db")
    await b.open()
    await b.open()  # idempotent
    await b.enqueue([job()])
    assert len(offload_threads()) == 2 and open_fds_on(tmp_path)
    await b.close()
    await b.close()  # idempotent
    assert offload_threads() == []
    assert open_fds_on(tmp_path) == []
    with pytest.raises(BackendUnavailable):
        await b.enqueue([job()])


async def test_enqueue_inside_the_callers_transaction(backends: Factory, tmp_path: Path) -> None:
    b = await backends()
    conn = sqlite3.connect(tmp_path / "jobs.db")
    try:
        conn.execute("BEGIN IMMEDIATE")
        (kept,) = await b.enqueue_in(conn, [job()])
        conn.commit()
        conn.execute("BEGIN IMMEDIATE")
        (dropped,) = await b.enqueue_in(conn, [job()])
        conn.rollback()
        with pytest.raises(QueueFull):
            await b.enqueue_in(conn, [job(), job()], limits={"q": 2})
    finally:
        conn.close()
    assert await b.get(kept.id) is not None and await b.get(dropped.id) is None
    with pytest.raises(ValidationError):
        await b.enqueue_in(object(), [job()])


_OPENER = """
import asyncio, sys
from offload.backends.sqlite import SQLiteBackend
from offload.job import NewJob, new_job_id

async def main():
    b = SQLiteBackend(sys.argv[1])
    await b.open()
    await b.enqueue([NewJob(id=new_job_id(), task="t", queue="q", args=b"{}")])
    await b.close()

asyncio.run(main())
"""


async def test_processes_opening_a_fresh_file_together(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _OPENER, url, stderr=subprocess.PIPE
        )
        for _ in range(6)
    ]
    errors = [(await p.communicate())[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    b = SQLiteBackend(url)
    await b.open()
    try:
        assert (await b.counts())["q"] == {JobState.QUEUED: 6}
    finally:
        await b.close()


async def test_run_maintenance_deletes_finished_jobs_past_retention(tmp_path: Path) -> None:
    from offload.backends.sqlite import SQLiteBackend
    from offload.job import ClaimRequest, Lease, NewJob, new_job_id
    from offload.outcome import Succeeded

    keep = SQLiteBackend(f"sqlite:///{tmp_path / 'r.db'}")
    expire = SQLiteBackend(f"sqlite:///{tmp_path / 'r.db'}?retention=0")
    await keep.open()
    await expire.open()
    try:
        jobs = [NewJob(id=new_job_id(), task="t", queue="q", args=b"{}") for _ in range(3)]
        await keep.enqueue(jobs)
        claimed = await keep.claim(ClaimRequest(queues=("q",), limit=2, worker_id="w"))
        await keep.complete([(Lease(j.id, "w", j.attempt), Succeeded()) for j in claimed])
        assert await keep.run_maintenance() == 0  # no retention: kept forever
        assert await expire.run_maintenance() == 2  # only the finished ones
        remaining = await keep.counts()
        assert remaining == {"q": {JobState.QUEUED: 1}}
    finally:
        await keep.close()
        await expire.close()
