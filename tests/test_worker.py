"""The worker, on the memory backend (and SQLite where files and threads matter)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import offload
from offload.backends.memory import MemoryBackend
from offload.job import ClaimRequest, Job, JobRecord, JobState, NewJob, new_job_id
from offload.worker import Worker, WorkerConfig

FAST = WorkerConfig(
    concurrency=4, lease_s=2.0, heartbeat_s=0.1, grace_s=5.0, poll_s=0.05, recover_s=0.1
)


class SpyBackend(MemoryBackend):
    """Records every claim's limit and the most jobs ever running at once."""

    def __init__(self) -> None:
        super().__init__()
        self.limits: list[int] = []

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        self.limits.append(req.limit)
        return await super().claim(req)


@pytest.fixture
async def app() -> AsyncIterator[offload.App]:
    a = offload.App(backend=SpyBackend())
    await a.open()
    yield a
    await a.close()


async def start(app: offload.App, config: WorkerConfig = FAST) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(app, config)
    task = asyncio.create_task(worker.run())
    await worker.started.wait()
    return worker, task


async def test_claims_never_exceed_free_slots(app: offload.App) -> None:
    gate = asyncio.Event()
    full = asyncio.Event()
    inside = 0
    most = 0

    @app.task
    async def held(i: int) -> int:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        if inside == 3:
            full.set()
        await gate.wait()
        inside -= 1
        return i

    jobs = await app.aenqueue_many([held.prepare(i) for i in range(10)])
    worker, run = await start(app, WorkerConfig(concurrency=3, poll_s=0.05))
    await asyncio.wait_for(full.wait(), 5)
    await asyncio.sleep(0.05)  # room for a wrong fourth claim to show itself
    assert (worker.busy, worker.idle) == (3, 0)
    gate.set()
    assert [await j.aresult(timeout=5) for j in jobs] == list(range(10))
    await worker.stop()
    await run
    spy = app.backend
    assert isinstance(spy, SpyBackend)
    assert most == 3
    assert max(spy.limits) <= 3 and min(spy.limits) >= 1


async def test_failures_retry_with_backoff_then_succeed(app: offload.App) -> None:
    calls = 0

    @app.task(max_attempts=3, retry=offload.FixedBackoff(0.05))
    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"try {calls}")
        return "ok"

    job = await flaky.aenqueue()
    worker, run = await start(app)
    assert await job.aresult(timeout=5) == "ok"
    await worker.stop()
    await run
    rec = job.record
    assert rec.attempt == 3
    assert [e.error.splitlines()[0] for e in rec.errors] == [
        "ConnectionError: try 1",
        "ConnectionError: try 2",
    ]
    assert "Traceback" in rec.errors[0].error


async def test_exhausted_attempts_go_dead_with_the_error(app: offload.App) -> None:
    @app.task(max_attempts=2, retry=offload.FixedBackoff(0))
    async def broken() -> None:
        raise ValueError("nope")

    job = await broken.aenqueue()
    worker, run = await start(app)
    with pytest.raises(offload.JobFailed) as info:
        await job.aresult(timeout=5)
    await worker.stop()
    await run
    assert info.value.state == "dead"
    assert job.record.attempt == 2 and len(job.record.errors) == 2
    assert "ValueError: nope" in (info.value.error or "")


async def test_control_exceptions_steer_the_job(app: offload.App) -> None:
    snoozed = 0

    @app.task(max_attempts=5)
    async def steer(mode: str) -> str:
        nonlocal snoozed
        if mode == "cancel":
            raise offload.Cancel("not needed")
        if mode == "snooze" and snoozed < 2:
            snoozed += 1
            raise offload.Snooze(0.01)
        if mode == "retry":
            raise offload.Retry(delay=0.01, reason="later")
        return mode

    cancel, snooze, retry = [await steer.aenqueue(m) for m in ("cancel", "snooze", "retry")]
    worker, run = await start(app)
    with pytest.raises(offload.JobFailed, match="not needed"):
        await cancel.aresult(timeout=5)
    assert await snooze.aresult(timeout=5) == "snooze"
    with pytest.raises(offload.JobFailed):
        await retry.aresult(timeout=5)
    await worker.stop()
    await run
    assert cancel.state is JobState.CANCELLED
    assert snooze.record.attempt == 1  # snoozes gave their attempts back
    assert retry.record.attempt == 5 and retry.state is JobState.DEAD
    assert "Retry: later" in (retry.record.error or "")


async def test_timeout_fails_the_attempt(app: offload.App) -> None:
    @app.task(timeout=0.05, max_attempts=1)
    async def sleepy() -> None:
        await asyncio.sleep(10)

    @app.task(timeout=0.05, max_attempts=1)
    def sleepy_sync() -> None:
        threading.Event().wait(0.3)

    a, s = await sleepy.aenqueue(), await sleepy_sync.aenqueue()
    worker, run = await start(app)
    for job in (a, s):
        with pytest.raises(offload.JobFailed, match=r"timeout of 0\.05s"):
            await job.aresult(timeout=5)
    await worker.stop()
    await run


async def test_undecodable_and_unknown_jobs_go_dead_and_the_worker_keeps_going(
    app: offload.App,
) -> None:
    @app.task(name="typed")
    def typed(x: int) -> int:
        return x

    bad = [
        NewJob(id=new_job_id(), task="typed", queue="default", args=b"not json"),
        NewJob(id=new_job_id(), task="typed", queue="default", args=b'{"x": "str"}'),
        NewJob(id=new_job_id(), task="typed", queue="default", args=b"[1,2]"),
        NewJob(id=new_job_id(), task="ghost", queue="default", args=b"{}"),
    ]
    records = await app.call(lambda b: b.enqueue(bad))
    good = await typed.aenqueue(7)
    worker, run = await start(app)
    assert await good.aresult(timeout=5) == 7
    for rec in records:
        done = await app.call(lambda b, r=rec: b.wait_done(r.id, 5))  # type: ignore[misc]
        assert done is not None and done.state is JobState.DEAD
        assert done.error and ("undecodable" in done.error or "UnknownTask" in done.error)
    await worker.stop()
    await run


async def test_a_lost_lease_stops_the_job_and_drops_its_outcome(app: offload.App) -> None:
    started = asyncio.Event()
    stopped = asyncio.Event()

    @app.task
    async def long() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise

    job = await long.aenqueue()
    worker, run = await start(app)
    await started.wait()
    await job.acancel()  # revokes the lease; the heartbeat notices
    await asyncio.wait_for(stopped.wait(), 5)
    await worker.stop()
    await run
    assert (await job.arefresh()).state is JobState.CANCELLED


async def test_expired_leases_are_recovered_by_a_live_worker(app: offload.App) -> None:
    @app.task
    async def work() -> str:
        return "ran"

    job = await work.aenqueue()
    # A worker that claimed the job and vanished.
    lost = await app.call(
        lambda b: b.claim(
            ClaimRequest(queues=("default",), limit=1, worker_id="ghost", lease_s=0.2)
        )
    )
    assert [j.id for j in lost] == [job.id]
    worker, run = await start(app)
    assert await job.aresult(timeout=5) == "ran"
    await worker.stop()
    await run
    assert job.record.attempt == 2
    assert job.record.errors[0].error == "lease expired (worker lost)"


async def test_graceful_stop_finishes_short_jobs_and_releases_long_ones(app: offload.App) -> None:
    began = asyncio.Event()

    @app.task
    async def short() -> str:
        await asyncio.sleep(0.05)
        return "short"

    @app.task
    async def endless() -> None:
        began.set()
        await asyncio.sleep(60)

    s, e = await short.aenqueue(), await endless.aenqueue()
    worker, run = await start(app, WorkerConfig(concurrency=4, grace_s=0.3, poll_s=0.05))
    await began.wait()
    await worker.stop()
    await run
    assert (await s.arefresh()).state is JobState.SUCCEEDED
    rec = (await e.arefresh()).record
    assert rec.state is JobState.QUEUED and rec.attempt == 0  # released, attempt given back


async def an_endless_job(app: offload.App) -> tuple[asyncio.Event, Job]:
    """A job of a task that never ends on its own, and the event its start sets."""
    began = asyncio.Event()

    @app.task
    async def endless() -> None:
        began.set()
        await asyncio.sleep(60)

    return began, await endless.aenqueue()


async def test_a_stop_reaches_a_worker_whose_every_slot_is_busy(app: offload.App) -> None:
    """With every slot taken the fetch loop waits for a free one; a stop must end that wait
    at once, so that the grace starts now and not when a job ends (here: never)."""
    began, job = await an_endless_job(app)
    worker, run = await start(app, WorkerConfig(concurrency=1, grace_s=0.2, poll_s=0.05))
    await began.wait()
    worker.request_stop()
    await asyncio.wait_for(run, 5)
    assert (await job.arefresh()).state is JobState.QUEUED  # released after the grace


async def test_a_forced_stop_skips_the_grace(app: offload.App) -> None:
    began, job = await an_endless_job(app)
    worker, run = await start(app, WorkerConfig(grace_s=60, poll_s=0.05))
    await began.wait()
    worker.request_stop()
    worker.request_stop(force=True)
    await asyncio.wait_for(run, 5)
    assert (await job.arefresh()).state is JobState.QUEUED


async def test_sync_tasks_can_enqueue_from_worker_threads(app: offload.App) -> None:
    @app.task
    def child(x: int) -> int:
        return x + 1

    @app.task
    def parent(x: int) -> str:
        return child.enqueue(x).id  # runs in a pool thread: goes through the bridge

    job = await parent.aenqueue(1)
    worker, run = await start(app)
    child_id = await job.aresult(timeout=5)
    assert await (await app.aget_job(child_id)).aresult(timeout=5) == 2
    await worker.stop()
    await run


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_nothing_is_left_behind_after_shutdown(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    fds_before = _fds()
    tasks_before = asyncio.all_tasks()
    app = offload.App(f"sqlite:///{tmp_path / 'leak.db'}")

    @app.task
    def sync_job(i: int) -> int:
        return i

    @app.task
    async def async_job(i: int) -> int:
        return i

    jobs = await app.aenqueue_many(
        [sync_job.prepare(i) for i in range(50)] + [async_job.prepare(i) for i in range(50)]
    )
    worker, run = await start(app)
    for j in jobs:
        await j.aresult(timeout=10)
    await worker.stop()
    await run
    await app.close()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == tasks_before
    assert set(threading.enumerate()) - threads_before == set()
    assert _fds() - fds_before == set()


def test_bad_worker_config_is_refused() -> None:
    for kwargs in (
        {"concurrency": 0},
        {"queues": ()},
        {"lease_s": 5, "heartbeat_s": 5},
        {"grace_s": -1},
    ):
        with pytest.raises(offload.ConfigurationError):
            WorkerConfig(**kwargs)  # type: ignore[arg-type]


async def test_burst_mode_stops_when_nothing_is_due(app: offload.App) -> None:
    calls = 0

    @app.task(max_attempts=3, retry=offload.FixedBackoff(0))
    def twice() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first try fails")
        return calls

    job = await twice.aenqueue()
    later = await twice.options(delay=3600).aenqueue()
    worker = Worker(app, WorkerConfig(burst=True, poll_s=0.05))
    await asyncio.wait_for(worker.run(), 10)
    assert await job.aresult(timeout=1) == 2  # the immediate retry ran before the exit
    assert (await later.arefresh()).state is JobState.SCHEDULED


async def test_a_worker_on_another_loop_builds_its_own_backend(tmp_path: Path) -> None:
    app = offload.App(f"sqlite:///{tmp_path / 'two-loops.db'}")

    @app.task
    def inc(x: int) -> int:
        return x + 1

    job = await asyncio.to_thread(inc.enqueue, 1)  # the app's home is now the bridge loop
    worker = Worker(app, WorkerConfig(burst=True, poll_s=0.05))
    await asyncio.wait_for(worker.run(), 10)
    assert await job.aresult(timeout=5) == 2
    await app.close()


async def test_a_job_back_after_its_lease_was_lost_records_its_outcome(app: offload.App) -> None:
    """The heartbeat finds a lease lost; the job's lease then expires and the same worker
    claims the job again: that run's outcome counts (the lost one's is dropped)."""
    calls = 0
    first_started = asyncio.Event()

    @app.task(max_attempts=5)
    async def slow_once() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_started.set()
            await asyncio.sleep(30)
        return calls

    job = await slow_once.aenqueue()
    config = WorkerConfig(
        concurrency=1, lease_s=0.3, heartbeat_s=0.05, recover_s=0.05, poll_s=0.05, grace_s=1
    )
    worker, run = await start(app, config)
    await asyncio.wait_for(first_started.wait(), 5)
    worker.lease_lost({job.id})  # as the heartbeat does when a backend refuses the lease
    assert await job.aresult(timeout=10) == 2
    await worker.stop()
    await run
    assert job.record.attempt == 2
