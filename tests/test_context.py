"""``offload.current_job()`` in async and sync tasks, and cooperative cancellation and timeouts
of sync tasks through ``ctx.check()``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import offload
from offload.hooks import Hook
from offload.job import JobRecord, JobState
from offload.outcome import Outcome
from offload.worker import Worker, WorkerConfig
from tests.services import backend_url

HEARTBEAT_S = 0.3
FAST = WorkerConfig(concurrency=4, lease_s=3.0, heartbeat_s=HEARTBEAT_S, grace_s=5.0, poll_s=0.05)


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis", "rabbitmq"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every backend: what is tested here sits above the seam."""
    if request.param == "memory":
        yield "memory://"
        return
    with backend_url(request.param, tmp_path) as isolated:
        yield isolated


@pytest.fixture
async def app(url: str) -> AsyncIterator[offload.App]:
    a = offload.App(url)
    await a.open()
    yield a
    await a.close()


async def start(app: offload.App, config: WorkerConfig = FAST) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(app, config)
    task = asyncio.create_task(worker.run())
    await worker.started.wait()
    return worker, task


def describe(ctx: offload.JobContext) -> dict[str, object]:
    return {
        "id": ctx.id,
        "task": ctx.task,
        "queue": ctx.queue,
        "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts,
        "enqueued_at": ctx.enqueued_at,
        "key": ctx.key,
        "thread": threading.current_thread().name,
    }


async def test_current_job_in_async_and_sync_tasks(app: offload.App) -> None:
    @app.task(name="a", max_attempts=4)
    async def in_async() -> dict[str, object]:
        return describe(offload.current_job())

    @app.task(name="s", queue="other")
    def in_sync() -> dict[str, object]:
        return describe(offload.current_job())

    a = await in_async.options(key="k1").aenqueue()
    s = await in_sync.aenqueue()
    worker, run = await start(app, WorkerConfig(queues=("default", "other"), poll_s=0.05))
    got_a, got_s = await a.aresult(timeout=5), await s.aresult(timeout=5)
    await worker.stop()
    await run
    assert got_a == {
        "id": a.id,
        "task": "a",
        "queue": "default",
        "attempt": 1,
        "max_attempts": 4,
        "enqueued_at": a.record.created_at,
        "key": "k1",
        "thread": "MainThread",
    }
    assert got_s["id"] == s.id and got_s["task"] == "s" and got_s["queue"] == "other"
    assert got_s["key"] is None and got_s["attempt"] == 1 and got_s["max_attempts"] == 3
    assert str(got_s["thread"]).startswith("offload-task")  # a pool thread saw it


def test_current_job_outside_a_job_is_a_usage_error() -> None:
    with pytest.raises(offload.UsageError, match="outside a running job"):
        offload.current_job()


async def test_hooks_see_the_job_context(app: offload.App) -> None:
    seen: list[tuple[str, str]] = []

    class Peek(Hook):
        def before_run(self, job: JobRecord) -> None:
            seen.append(("before", offload.current_job().id))

        def after_run(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
            seen.append(("after", offload.current_job().id))

    app.add_hook(Peek())

    @app.task
    def noop() -> None: ...

    job = await noop.aenqueue()
    await asyncio.wait_for(Worker(app, WorkerConfig(poll_s=0.05, burst=True)).run(), 10)
    assert seen == [("before", job.id), ("after", job.id)]


async def test_a_sync_task_stops_within_a_heartbeat_of_a_cancel(app: offload.App) -> None:
    entered = threading.Event()
    stopped = threading.Event()
    seen_cancelled: list[bool] = []
    ended: list[tuple[str, offload.JobContext, Outcome | None]] = []

    class Ends(Hook):
        def after_run(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
            ended.append((job.id, offload.current_job(), outcome))

    app.add_hook(Ends())

    @app.task
    def spin() -> None:
        ctx = offload.current_job()
        entered.set()
        try:
            while True:
                ctx.check()
                time.sleep(0.005)
        except offload.JobInterrupted:
            seen_cancelled.append(ctx.cancelled)
            stopped.set()
            raise

    job = await spin.aenqueue()
    worker, run = await start(app)
    assert await asyncio.to_thread(entered.wait, 5)
    await job.acancel()
    t0 = time.monotonic()
    assert await asyncio.to_thread(stopped.wait, 5)
    took = time.monotonic() - t0
    await worker.stop()
    await run
    # One heartbeat for the worker to learn the lease is gone, and a little for the thread
    # to see it (it checks every 5 ms) under a loaded machine.
    assert took < HEARTBEAT_S + 0.2, took
    assert seen_cancelled == [True]
    assert [(jid, outcome) for jid, _, outcome in ended] == [(job.id, None)]  # lease lost
    assert (await app.aget_job(job.id)).state is JobState.CANCELLED
    assert worker.busy == 0


async def test_a_sync_task_past_its_timeout_stops_and_fails(app: offload.App) -> None:
    stopped = threading.Event()
    remaining: list[float | None] = []

    @app.task(timeout=0.2, max_attempts=1)
    def slow() -> None:
        ctx = offload.current_job()
        remaining.append(ctx.remaining_s)
        try:
            while True:
                ctx.check()
                time.sleep(0.005)
        except offload.JobInterrupted as exc:
            assert exc.timed_out and ctx.timed_out and ctx.cancelled
            stopped.set()
            raise

    job = await slow.aenqueue()
    worker, run = await start(app)
    with pytest.raises(offload.JobFailed, match="TimeoutError"):
        await job.aresult(timeout=5)
    assert await asyncio.to_thread(stopped.wait, 5)
    await worker.stop()
    await run
    assert remaining and remaining[0] is not None and 0 < remaining[0] <= 0.2


async def test_a_sync_task_is_told_to_stop_when_the_grace_ends(app: offload.App) -> None:
    entered = threading.Event()
    stopped = threading.Event()

    @app.task
    def spin() -> None:
        ctx = offload.current_job()
        entered.set()
        while not ctx.cancelled:
            time.sleep(0.005)
        stopped.set()

    job = await spin.aenqueue()
    worker, run = await start(app, WorkerConfig(grace_s=0.0, poll_s=0.05))
    assert await asyncio.to_thread(entered.wait, 5)
    await worker.stop()
    await run
    assert await asyncio.to_thread(stopped.wait, 5)
    assert (await app.aget_job(job.id)).state is JobState.QUEUED  # given back
