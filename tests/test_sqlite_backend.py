"""The sqlite:// backend: its own guarantees (files, threads, processes, untrusted rows)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec
import pytest

from offload.backends import from_url
from offload.backends.sqlite import SQLiteBackend, doorbell
from offload.backends.sqlite.recovery import find_expired, write_expired
from offload.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidState,
    QueueFull,
    ValidationError,
)
from offload.job import ClaimRequest, JobFilter, JobState, NewJob, new_job_id
from offload.outcome import RetryAt, Succeeded
from offload.testing import BackendConformance, MakeBackend, lease_of, must_get

T = TypeVar("T")


class Factory(Protocol):
    def __call__(self, **options: object) -> Awaitable[SQLiteBackend]: ...


def job(queue: str = "q", **kw: object) -> NewJob:
    return NewJob(id=new_job_id(), task="t", queue=queue, args=b'{"x": 1}', **kw)  # type: ignore[arg-type]


def claim(
    queue: str = "q", limit: int = 10, worker: str = "w", lease_s: float = 30.0
) -> ClaimRequest:
    return ClaimRequest(queues=(queue,), limit=limit, worker_id=worker, lease_s=lease_s)


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[Factory]:
    opened: list[SQLiteBackend] = []

    async def make(**options: object) -> SQLiteBackend:
        backend = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db", **options)
        await backend.open()
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        await backend.close()


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


def offload_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("offload-sqlite")]


def open_fds_on(path: Path) -> list[str]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            fds.append(target)
    return fds


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


async def test_recover_and_heartbeat(backends: Factory) -> None:
    b = await backends()
    await b.enqueue([job(), job()])
    first, second = await b.claim(claim(lease_s=0.05))
    assert first.lease is not None and second.lease is not None
    assert await b.heartbeat([first.lease], 30.0) == {first.id}
    await asyncio.sleep(0.1)  # the point: let the second lease expire
    assert await b.recover() == 1
    back = await b.get(second.id)
    assert back is not None and back.state is JobState.QUEUED and back.attempt == 1
    assert back.errors[-1].error == "lease expired (worker lost)"


async def test_recovery_write_is_fenced_on_the_lease_it_found(backends: Factory) -> None:
    """A decision made for an expired lease is written only while that lease still stands:
    a job completed, heartbeated or re-leased between the find and the write is left alone."""
    b = await backends()
    done, beating, released = await b.enqueue([job(), job(), job()])
    running = {r.id: r for r in await b.claim(claim(lease_s=0.0))}  # expired at once
    found_at = time.time()
    stale = await b._write(lambda conn: find_expired(conn, found_at, 10))
    assert {d.id for d in stale} == {done.id, beating.id, released.id}
    await b.complete([(lease_of(running[done.id]), Succeeded(None))])
    assert await b.heartbeat([lease_of(running[beating.id])], 30.0) == {beating.id}
    only_released = [d for d in stale if d.id == released.id]
    assert await b._write(lambda conn: write_expired(conn, only_released, found_at)) == 1
    (again,) = await b.claim(claim(worker="w2", lease_s=0.0))  # attempt 2, expired too
    assert again.id == released.id and again.attempt == 2

    # The fence, job by job: done is no longer running and holds no lease; beating holds the
    # same lease, no longer expired; released is expired again, under another attempt.
    now = time.time()
    assert await b._write(lambda conn: write_expired(conn, stale, now)) == 0
    finished = await must_get(b, done.id)
    assert finished.state is JobState.SUCCEEDED and finished.errors == ()
    kept = await must_get(b, beating.id)
    assert kept.state is JobState.RUNNING and kept.errors == ()
    assert kept.worker_id == "w" and kept.attempt == 1
    relet = await must_get(b, released.id)
    assert relet.state is JobState.RUNNING and (relet.attempt, relet.worker_id) == (2, "w2")
    assert [(e.attempt, e.worker_id) for e in relet.errors] == [(1, "w")]


async def test_recover_goes_on_batch_after_batch(
    backends: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("offload.backends.sqlite.backend.RECOVER_BATCH", 3)
    b = await backends()
    await b.enqueue([job() for _ in range(7)])
    await b.claim(claim(lease_s=0.0))
    assert await b.recover() == 7
    assert await b.claim(claim()) != []  # all back in the queue
    assert await b.recover() == 0


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
        raw.execute("PRAGMA user_version = 1")
        b = await backends()
        indexes = {n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert raw.execute("PRAGMA user_version").fetchone() == (2,)
    finally:
        raw.close()
    assert "offload_jobs_active_key" not in indexes and "offload_jobs_active_queue_key" in indexes
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


# -- the doorbell: cross-process wake-ups (Linux) ----------------------------------------------

needs_doorbell = pytest.mark.skipif(not doorbell.supported(), reason="the doorbell is Linux only")


def doorbell_threads() -> list[threading.Thread]:
    return [t for t in offload_threads() if t.name.startswith("offload-sqlite-doorbell")]


async def started(coro: Awaitable[T]) -> asyncio.Task[T]:
    """A task already past its first step: a waiter has registered before this returns."""
    task: asyncio.Task[T] = asyncio.ensure_future(coro)
    await asyncio.sleep(0)
    return task


@needs_doorbell
async def test_doorbell_wakes_a_waiter_of_another_instance_at_once(backends: Factory) -> None:
    # poll_ms=10000: without a ring the waiter would only look at the file after 10 s
    waiting, producer = await backends(poll_ms=10_000), await backends()
    waiter = await started(waiting.wait_for_work(["q"], timeout_s=30))
    await producer.enqueue([job()])
    await asyncio.wait_for(waiter, timeout=1)


@needs_doorbell
async def test_doorbell_wakes_wait_done_of_another_instance(backends: Factory) -> None:
    waiting, worker = await backends(poll_ms=10_000), await backends()
    (rec,) = await worker.enqueue([job()])
    waiter = await started(waiting.wait_done(rec.id, timeout_s=30))
    (running,) = await worker.claim(claim())
    assert running.lease is not None
    await worker.complete([(running.lease, Succeeded(b"1"))])
    done = await asyncio.wait_for(waiter, timeout=1)
    assert done is not None and done.state is JobState.SUCCEEDED


_ENQUEUER = """
import asyncio, sys, time
from offload.backends.sqlite import SQLiteBackend
from offload.job import NewJob, new_job_id

async def main():
    b = SQLiteBackend(sys.argv[1])
    await b.open()
    await b.enqueue([NewJob(id=new_job_id(), task="t", queue="q", args=b"{}")])
    print(time.time(), flush=True)
    await b.close()

asyncio.run(main())
"""


@needs_doorbell
async def test_doorbell_wakes_a_waiter_on_another_processes_enqueue(backends: Factory) -> None:
    waiting = await backends(poll_ms=10_000)
    waiter = await started(waiting.wait_for_work(["q"], timeout_s=30))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ENQUEUER, waiting.url, stdout=subprocess.PIPE
    )
    await asyncio.wait_for(waiter, timeout=8)  # the process starts slowly; 10 s is the poll
    woken_at = time.time()
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert woken_at - float(out) < 1.0


@needs_doorbell
async def test_doorbell_removes_the_entry_of_a_listener_that_is_gone(backends: Factory) -> None:
    b = await backends()
    wake = Path(doorbell.registry_dir(b.path))
    os.makedirs(wake)
    gone = [wake / f"{doorbell.scope()}-999999-0badc0de.{kind}" for kind in ("work", "done")]
    elsewhere = wake / "1-2-3.work"  # another network namespace: neither rung nor judged here
    for entry in [*gone, elsewhere]:
        entry.touch()
    await b.enqueue([job()])
    assert not gone[0].exists() and not gone[1].exists()
    assert elsewhere.exists()


@needs_doorbell
async def test_a_ring_never_causes_another_ring(backends: Factory) -> None:
    one, two = await backends(poll_ms=10_000), await backends(poll_ms=10_000)
    own = await started(one.wait_for_work(["other"], timeout_s=30))
    waiter = await started(two.wait_for_work(["q"], timeout_s=30))
    await one.enqueue([job()])
    await asyncio.wait_for(waiter, timeout=1)
    await asyncio.wait_for(own, timeout=1)  # woken by its own instance, without a ring
    assert one._doorbell is not None and two._doorbell is not None
    await two.close()  # its thread has handled the ring and ended: what it sent is counted
    await one.close()
    assert (one._doorbell.sent, two._doorbell.heard, two._doorbell.sent) == (1, 1, 0)


@needs_doorbell
async def test_close_stops_the_doorbell_and_removes_its_entries(tmp_path: Path) -> None:
    b = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db")
    await b.open()
    await b.wait_for_work(["q"], timeout_s=0.01)
    assert await b.wait_done("missing", timeout_s=0.01) is None
    wake = tmp_path / "jobs.db-wake"
    assert len(doorbell_threads()) == 1
    assert sorted(p.suffix for p in wake.iterdir()) == [".done", ".work"]
    await b.close()
    assert offload_threads() == [] and not wake.exists()  # the last listener removes it
    assert open_fds_on(tmp_path) == []
    await b.open()  # and it starts afresh when opened again
    await b.wait_for_work(["q"], timeout_s=0.01)
    assert len(doorbell_threads()) == 1
    await b.close()
    assert offload_threads() == []


@needs_doorbell
async def test_doorbell_puts_back_a_removed_entry(backends: Factory) -> None:
    waiting, producer = await backends(poll_ms=10_000), await backends()
    await waiting.wait_for_work(["q"], timeout_s=0.01)
    wake = Path(doorbell.registry_dir(waiting.path))
    (name,) = os.listdir(wake)
    entry = wake / name
    os.unlink(entry)  # a clean-up by hand; the listener checks every second
    deadline = time.monotonic() + 5
    while not entry.exists():
        assert time.monotonic() < deadline, "the entry was not put back"
        await asyncio.sleep(0.05)
    waiter = await started(waiting.wait_for_work(["q"], timeout_s=30))
    await producer.enqueue([job()])
    await asyncio.wait_for(waiter, timeout=1)


async def test_doorbell_0_turns_it_off(backends: Factory, tmp_path: Path) -> None:
    waiting = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db?doorbell=0&poll_ms=20")
    await waiting.open()
    try:
        producer = await backends()
        waiter = await started(waiting.wait_for_work(["q"], timeout_s=30))
        await producer.enqueue([job()])
        await asyncio.wait_for(waiter, timeout=2)  # the poll still finds the work
        assert doorbell_threads() == [] and not (tmp_path / "jobs.db-wake").exists()
    finally:
        await waiting.close()
    assert SQLiteBackend("sqlite:////tmp/x.db", doorbell=False)._doorbell is None
    with pytest.raises(ConfigurationError, match="doorbell"):
        SQLiteBackend("sqlite:////tmp/x.db?doorbell=maybe")


@needs_doorbell
async def test_a_listener_whose_queue_was_full_hears_what_it_missed(backends: Factory) -> None:
    b = await backends()
    assert b._doorbell is not None
    token = f"{doorbell.scope()}-{os.getpid()}-f0f0f0f0"
    wake = Path(doorbell.registry_dir(b.path))
    os.makedirs(wake)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.bind(doorbell.address(token))  # a listener that does not read: a stopped process
        peer.setblocking(False)
        for kind in ("work", "done"):
            (wake / f"{token}.{kind}").touch()
        for _ in range(10_000):  # until its queue is full
            sent = b._doorbell.sent
            b._doorbell.ring(work=True)
            if b._doorbell.sent == sent:
                break
        assert b._doorbell.sent < 10_000

        def heard() -> list[bytes]:
            out = []
            while True:
                try:
                    out.append(peer.recv(65536))
                except BlockingIOError:
                    return out

        assert set(heard()) == {b"\x01"}  # work
        b._doorbell.ring(done=["a"])
        assert heard() == [b"\x03"]  # only done "a" asked, but it may have missed anything
        b._doorbell.ring(done=["b"])
        assert heard() == [b'\x04["b"]']


async def test_recovery_skips_a_row_with_unreadable_counters(
    backends: Factory, tmp_path: Path
) -> None:
    """Stored rows are untrusted: an expired job whose attempt does not read as an integer
    must not make every recovery pass fail; the readable ones are still put back."""
    b = await backends()
    broken, fine = await b.enqueue([job(), job()])
    await b.claim(claim(lease_s=0.0))
    raw = sqlite3.connect(tmp_path / "jobs.db")
    with raw:
        raw.execute("UPDATE offload_jobs SET attempt = 'x' WHERE id = ?", (broken.id,))
    raw.close()
    assert await b.recover() == 1
    assert (await must_get(b, fine.id)).state is JobState.QUEUED
    assert await b.recover() == 0  # still skipped, never an error
