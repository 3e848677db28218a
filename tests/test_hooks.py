"""Hooks on the App: order, events by outcome, and a hook that raises loses nothing."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

import offload
from offload.hooks import Hook, Hooks
from offload.job import Job, JobRecord, JobState, NewJob
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Succeeded
from offload.worker import Worker, WorkerConfig
from tests.services import backend_url

BURST = WorkerConfig(
    concurrency=4, lease_s=2.0, heartbeat_s=0.1, grace_s=5.0, poll_s=0.05, burst=True
)


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


class Recorder(Hook):
    """Writes every event it hears, tagged with its name, into a shared list."""

    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events

    def _note(self, what: str) -> None:
        self.events.append(f"{self.name}.{what}")

    def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
        self._note(f"before_enqueue:{len(jobs)}")

    def after_enqueue(self, jobs: Sequence[Job]) -> None:
        self._note(f"after_enqueue:{len(jobs)}")

    def before_run(self, job: JobRecord) -> None:
        self._note(f"before_run:{job.attempt}")

    def after_run(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
        assert runtime_s >= 0
        self._note(f"after_run:{type(outcome).__name__}")

    def on_success(self, job: JobRecord, outcome: Succeeded) -> None:
        self._note("on_success")

    def on_retry(self, job: JobRecord, outcome: RetryAt) -> None:
        self._note("on_retry")

    def on_dead(self, job: JobRecord, outcome: Dead) -> None:
        self._note("on_dead")

    def on_cancelled(self, job: JobRecord, outcome: Cancelled) -> None:
        self._note(f"on_cancelled:{outcome.reason}")

    def worker_started(self, worker: Worker) -> None:
        self._note("worker_started")

    def worker_stopped(self, worker: Worker) -> None:
        self._note("worker_stopped")


class Raiser(Hook):
    """Raises in every event."""

    def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
        raise RuntimeError("before_enqueue broke")

    def after_enqueue(self, jobs: Sequence[Job]) -> None:
        raise RuntimeError("after_enqueue broke")

    def before_run(self, job: JobRecord) -> None:
        raise RuntimeError("before_run broke")

    def after_run(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
        raise RuntimeError("after_run broke")

    def on_success(self, job: JobRecord, outcome: Succeeded) -> None:
        raise RuntimeError("on_success broke")

    def on_dead(self, job: JobRecord, outcome: Dead) -> None:
        raise RuntimeError("on_dead broke")

    def worker_started(self, worker: Worker) -> None:
        raise RuntimeError("worker_started broke")


async def drain(app: offload.App) -> None:
    await asyncio.wait_for(Worker(app, BURST).run(), 10)


async def run_until_final(app: offload.App, job: Job) -> None:
    """Burst workers until ``job`` is final: on a broker a retried job's message comes back
    through a delay queue, and one burst worker may find nothing due in that moment."""
    deadline = asyncio.get_running_loop().time() + 10
    while not (await app.aget_job(job.id)).state.final:
        assert asyncio.get_running_loop().time() < deadline, "the job never ended"
        await drain(app)


async def test_before_hooks_run_in_order_and_after_hooks_in_reverse(app: offload.App) -> None:
    events: list[str] = []
    app.add_hook(Recorder("a", events))
    app.add_hook(Recorder("b", events))

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    job = await add.aenqueue(1, 2)
    assert events == [
        "a.before_enqueue:1",
        "b.before_enqueue:1",
        "b.after_enqueue:1",
        "a.after_enqueue:1",
    ]
    events.clear()
    await drain(app)
    assert await job.aresult(timeout=1) == 3
    assert events == [
        "a.worker_started",
        "b.worker_started",
        "a.before_run:1",
        "b.before_run:1",
        "b.after_run:Succeeded",
        "a.after_run:Succeeded",
        "b.on_success",
        "a.on_success",
        "b.worker_stopped",
        "a.worker_stopped",
    ]


async def test_outcome_events_follow_each_ending(app: offload.App) -> None:
    events: list[str] = []
    app.add_hook(Recorder("h", events))

    @app.task(max_attempts=2, retry=offload.FixedBackoff(0))
    def fails() -> None:
        raise ValueError("no")

    @app.task
    def cancels() -> None:
        raise offload.Cancel("not wanted")

    dead = await fails.aenqueue()
    await run_until_final(app, dead)
    with pytest.raises(offload.JobFailed):
        await dead.aresult(timeout=1)
    assert [e for e in events if e.startswith("h.on_") or "after_run" in e] == [
        "h.after_run:RetryAt",
        "h.on_retry",
        "h.after_run:Dead",
        "h.on_dead",
    ]
    events.clear()
    cancelled = await cancels.aenqueue()
    await drain(app)
    assert (await app.aget_job(cancelled.id)).state is JobState.CANCELLED
    assert "h.on_cancelled:not wanted" in events


async def test_a_hook_that_raises_loses_nothing(
    app: offload.App, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []
    app.add_hook(Raiser())
    app.add_hook(Recorder("after", events))  # still called although the first one raised

    @app.task
    def double(x: int) -> int:
        return 2 * x

    @app.task(max_attempts=1)
    def broken() -> None:
        raise ValueError("the task's own failure")

    with caplog.at_level(logging.ERROR, logger="offload.hooks"):
        job = await double.aenqueue(21)
        bad = await broken.aenqueue()
        assert (await app.aget_job(job.id)).state is JobState.QUEUED  # stored all the same
        await drain(app)
    assert await job.aresult(timeout=1) == 42  # ran and its outcome was applied
    with pytest.raises(offload.JobFailed, match="the task's own failure"):
        await bad.aresult(timeout=1)
    assert "after.on_success" in events and "after.on_dead" in events
    failed = {str(r.exc_info[1]) for r in caplog.records if r.exc_info}
    assert failed >= {
        "before_enqueue broke",
        "after_enqueue broke",
        "before_run broke",
        "after_run broke",
        "on_success broke",
        "on_dead broke",
        "worker_started broke",
    }


def test_sync_enqueue_runs_the_hooks_in_the_callers_thread(tmp_path: Path) -> None:
    app = offload.App(f"sqlite:///{tmp_path / 'jobs.db'}")
    seen: list[int] = []

    class Where(Hook):
        def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
            seen.append(threading.get_ident())

        def after_enqueue(self, jobs: Sequence[Job]) -> None:
            seen.append(threading.get_ident())

    app.add_hook(Where())

    @app.task
    def noop() -> None: ...

    try:
        noop.enqueue()
        app.enqueue_many([noop.prepare(), noop.prepare()])
    finally:
        app.close_sync()
    assert seen == [threading.get_ident()] * 4


def test_only_hooks_that_override_an_event_are_called_for_it() -> None:
    class OnlyDead(Hook):
        def on_dead(self, job: JobRecord, outcome: Dead) -> None: ...

    hooks = Hooks([OnlyDead(), Hook()])
    assert len(hooks) == 2
    assert hooks.before_run == () and hooks.after_run == () and len(hooks.on_dead) == 1
    with pytest.raises(TypeError, match=r"offload\.hooks\.Hook"):
        hooks.add(object())  # type: ignore[arg-type]


async def test_a_worker_listener_still_hears_its_jobs(app: offload.App) -> None:
    started: list[str] = []
    finished: list[tuple[str, str]] = []

    class Listener:
        def job_started(self, job: JobRecord) -> None:
            started.append(job.id)

        def job_finished(self, job: JobRecord, outcome: Outcome, runtime_s: float) -> None:
            finished.append((job.id, type(outcome).__name__))
            raise RuntimeError("a broken listener is logged, not fatal")

    @app.task
    async def ok() -> None: ...

    job = await ok.aenqueue()
    await asyncio.wait_for(Worker(app, BURST, listeners=[Listener()]).run(), 10)
    assert started == [job.id] and finished == [(job.id, "Succeeded")]
    assert (await app.aget_job(job.id)).state is JobState.SUCCEEDED


async def test_a_hook_broken_for_every_job_is_logged_once_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class AlwaysBroken(Hook):
        def before_run(self, job: JobRecord) -> None:
            raise RuntimeError("broken for every job")

    async with offload.App("memory://") as app:
        app.add_hook(AlwaysBroken())

        @app.task
        async def ok(i: int) -> int:
            return i

        jobs = [await ok.aenqueue(i) for i in range(5)]
        with caplog.at_level(logging.ERROR, logger="offload.hooks"):
            await drain(app)
        assert [await j.aresult(timeout=1) for j in jobs] == list(range(5))
    lines = [r for r in caplog.records if r.name == "offload.hooks"]
    assert len(lines) == 1 and "AlwaysBroken.before_run failed" in lines[0].getMessage()
    assert lines[0].exc_info is not None  # the first one with its traceback


async def test_http_enqueues_run_the_enqueue_hooks(tmp_path: Path) -> None:
    """The HTTP API's group commit stores through the backend directly: it must still show
    each request's job to the app's enqueue hooks, once, as task.enqueue would (with what the
    enqueue did: a replayed Idempotency-Key found an existing job)."""
    import httpx

    from offload.server import create_service

    app = offload.App(f"sqlite:///{tmp_path / 'jobs.db'}")

    @app.task(name="add", expose=True)
    def add(a: int) -> int:
        return a

    seen: list[tuple[str, str]] = []
    outcomes: list[str | None] = []

    class Seen(Hook):
        def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
            seen.extend(("before", j.task) for j in jobs)

        def after_enqueue(self, jobs: Sequence[Job]) -> None:
            seen.extend(("after", j.id) for j in jobs)
            outcomes.extend(j.outcome for j in jobs)

    app.add_hook(Seen())
    service = create_service(app)
    async with service.router.lifespan_context(service):
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            answers = await asyncio.gather(
                *(client.post("/v1/jobs", json={"task": "add", "args": {"a": i}}) for i in range(3))
            )
            ids = sorted(r.json()["id"] for r in answers)
            assert outcomes == ["created"] * 3
            body, key = {"task": "add", "args": {"a": 0}}, {"Idempotency-Key": "k"}
            first = await client.post("/v1/jobs", json=body, headers=key)
            again = await client.post("/v1/jobs", json=body, headers=key)
    assert again.json()["id"] == first.json()["id"]
    assert outcomes == ["created"] * 4 + ["existing"]
    assert [s for s in seen if s[0] == "before"] == [("before", "add")] * 5
    after = [s[1] for s in seen if s[0] == "after"]
    assert sorted(after[:3]) == ids and after[3:] == [first.json()["id"]] * 2
