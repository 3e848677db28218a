"""Schedules: declaration checks, DST, missed ticks per policy, pause, jitter, on a clock the
test controls (the memory backend and the scheduler share it)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

import offload
from offload.backends.memory import MemoryBackend
from offload.errors import ConfigurationError
from offload.schedules import TICK_WINDOW_S, BoundSchedule
from offload.testing.helpers import claim_one, claim_request
from offload.worker.schedules import Scheduler


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def setup(schedule: offload.Cron | offload.Every, start: datetime) -> tuple[Any, ...]:
    clock = Clock(start)
    backend = MemoryBackend(clock=clock)
    app = offload.App(backend=backend)

    @app.task(name="tick", schedule=schedule)
    def tick(n: int = 0) -> None: ...

    scheduler = Scheduler(list(app.schedules.values()), backend, clock=clock, rng=lambda: 0.5)
    return clock, backend, scheduler, app.schedules["tick"]


def tick_times(backend: MemoryBackend, s: BoundSchedule) -> list[float]:
    """The tick of every stored job, from its key, in tick order."""
    ticks = [int(j.key.rsplit("@", 1)[1]) / 1000 for j in backend.store.jobs.values() if j.key]
    assert all(j.key == s.key(t) for j, t in zip(backend.store.jobs.values(), ticks, strict=True))
    return sorted(ticks)


async def run_for(clock: Clock, scheduler: Scheduler, seconds: float, step: float) -> None:
    end = clock.now + seconds
    while clock.now < end:
        await scheduler.pass_once()
        clock.now += step


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (lambda: offload.Cron("61 * * * *"), "invalid cron expression"),
        (lambda: offload.Cron("* * * *"), "invalid cron expression"),
        (lambda: offload.Cron("0 3 * * *", tz="Mars/Olympus"), "unknown time zone"),
        (lambda: offload.Every(seconds=0), "interval"),
        (lambda: offload.Every(seconds=-5), "interval"),
        (lambda: offload.Every(minutes="x"), "interval"),  # type: ignore[arg-type]
        (lambda: offload.Every(seconds=5, missed="some"), "missed"),
        (lambda: offload.Every(seconds=5, jitter=-1), "jitter"),
        (lambda: offload.Every(seconds=5, args={"nope": 1}), "nope"),
        (lambda: "*/5 * * * *", "offload.Cron"),
    ],
)
def test_bad_schedule_is_a_configuration_error_naming_the_task(schedule: Any, message: str) -> None:
    app = offload.App("memory://")
    with pytest.raises(ConfigurationError, match=message) as err:

        @app.task(name="report", schedule=schedule())
        def report(n: int = 0) -> None: ...

    assert "report" in str(err.value)
    assert "report" not in app.tasks and not app.schedules


def test_schedule_names_must_be_unique() -> None:
    app = offload.App("memory://")
    both = [offload.Every(minutes=1), offload.Every(minutes=5, args={"n": 5})]
    with pytest.raises(ConfigurationError, match="name="):
        app.task(name="a", schedule=both)(lambda n=0: None)
    named = [offload.Every(minutes=1), offload.Every(minutes=5, args={"n": 5}, name="a5")]
    app.task(name="a", schedule=named)(lambda n=0: None)
    assert sorted(app.schedules) == ["a", "a5"]
    assert app.schedules["a5"].args == b'{"n":5}'


async def test_cron_across_both_dst_changes_in_paris() -> None:
    # 02:30 does not exist on 2026-03-29 (it runs at 03:00 CEST) and occurs twice on
    # 2026-10-25 (it runs once); */30 keeps half-hour steps through both.
    daily = offload.Cron("30 2 * * *", tz="Europe/Paris")
    for start, want in [
        (utc(2026, 3, 27), ["03-27 01:30", "03-28 01:30", "03-29 01:00", "03-30 00:30"]),
        (utc(2026, 10, 23), ["10-23 00:30", "10-24 00:30", "10-25 00:30", "10-26 01:30"]),
    ]:
        clock, backend, scheduler, s = setup(daily, start)
        await run_for(clock, scheduler, 4 * 86400, step=600)
        got = [
            datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M") for t in tick_times(backend, s)
        ]
        assert got == want
    half = offload.Cron("*/30 * * * *", tz="Europe/Paris")
    clock, backend, scheduler, s = setup(half, utc(2026, 10, 24, 22, 50))
    await run_for(clock, scheduler, 4 * 3600, step=60)
    ticks = tick_times(backend, s)
    assert len(ticks) == 8 and {b - a for a, b in itertools.pairwise(ticks)} == {1800.0}


@pytest.mark.parametrize(
    ("missed", "after_restart"),
    [("latest", 1), ("all", 10), ("none", 0)],
)
async def test_restart_after_missed_ticks(missed: str, after_restart: int) -> None:
    clock, backend, scheduler, s = setup(
        offload.Every(minutes=1, missed=missed), utc(2026, 1, 5, 12, 0, 30)
    )
    await scheduler.pass_once()  # the schedule starts: nothing before now is due
    assert tick_times(backend, s) == []
    clock.now += 60
    await scheduler.pass_once()
    first = tick_times(backend, s)
    assert first == [utc(2026, 1, 5, 12, 1).timestamp()]
    # Every worker stops for ten minutes; a new one (a new scheduler) starts.
    clock.now += 615  # the latest missed tick (12:11) is 45 s late: beyond the grace
    await Scheduler([s], backend, clock=clock).pass_once()
    ticks = tick_times(backend, s)
    assert len(ticks) == 1 + after_restart
    if after_restart:
        assert ticks[-1] == utc(2026, 1, 5, 12, 11).timestamp()  # the latest missed tick
    assert len(set(ticks)) == len(ticks)
    clock.now += 30  # and then on time again, whatever the policy
    await scheduler.pass_once()
    assert tick_times(backend, s)[-1] == utc(2026, 1, 5, 12, 12).timestamp()
    assert len(tick_times(backend, s)) == 2 + after_restart


async def test_late_ticks_within_grace_all_run() -> None:
    clock, backend, scheduler, s = setup(
        offload.Every(seconds=1, missed="none", grace=10), utc(2026, 1, 5, 12)
    )
    await scheduler.pass_once()
    clock.now += 5.5  # a stalled scheduler: five ticks late, none beyond the grace
    await scheduler.pass_once()
    assert len(tick_times(backend, s)) == 5


async def test_paused_schedule_skips_its_ticks() -> None:
    clock, backend, scheduler, s = setup(offload.Every(minutes=1), utc(2026, 1, 5, 12))
    await scheduler.pass_once()
    await backend.set_schedule_paused("tick", True)
    await run_for(clock, scheduler, 300, step=30)
    assert tick_times(backend, s) == []
    await backend.set_schedule_paused("tick", False)
    clock.now += 30
    await scheduler.pass_once()  # the pause is not replayed: one tick, the current one
    assert tick_times(backend, s) == [utc(2026, 1, 5, 12, 5).timestamp()]
    (rec,) = (await backend.schedule_records()).values()
    (job,) = backend.store.jobs.values()
    assert (rec.last_job_id, rec.paused) == (job.id, False)


async def test_jitter_delays_the_job_not_the_tick() -> None:
    clock, backend, scheduler, s = setup(offload.Every(minutes=1, jitter=20), utc(2026, 1, 5))
    await scheduler.pass_once()
    clock.now += 61
    await scheduler.pass_once()
    (job,) = backend.store.jobs.values()
    assert job.run_at == utc(2026, 1, 5, 0, 1).timestamp() + 10  # rng 0.5 of 20 s
    assert job.key == s.key(utc(2026, 1, 5, 0, 1).timestamp())


async def test_a_limited_tasks_ticks_keep_its_limit() -> None:
    # A tick's job is a job of its task: a concurrency limit holds it as it holds a plain
    # enqueue, or a slow task on a short interval would run past max_per_key.
    clock = Clock(utc(2026, 1, 5, 12))
    backend = MemoryBackend(clock=clock)
    app = offload.App(backend=backend)

    @app.task(name="sync_all", schedule=offload.Every(minutes=1), concurrency_key="region",
              max_per_key=1)  # fmt: skip
    def sync_all(region: str = "eu") -> None: ...

    scheduler = Scheduler(list(app.schedules.values()), backend, clock=clock, rng=lambda: 0.5)
    await run_for(clock, scheduler, 180, step=61)
    ticks = list(backend.store.jobs.values())
    assert len(ticks) == 2
    assert all(j.limits == sync_all.prepare().limits != () for j in ticks)
    await claim_one(backend)
    assert await backend.claim(claim_request("default", 1)) == []  # the second tick waits
    with pytest.raises(ConfigurationError, match="limit key"):

        @app.task(name="keyless", schedule=offload.Every(minutes=1), concurrency_key="region")
        def keyless(region: str | None = None) -> None: ...


async def test_a_finished_tick_is_not_enqueued_again_by_a_stale_scheduler() -> None:
    clock, backend, _, s = setup(offload.Every(minutes=1), utc(2026, 1, 5, 12))
    tick = utc(2026, 1, 5, 12, 1).timestamp()
    clock.now = tick + 1
    (first,) = await backend.enqueue([s.job(tick)])
    running = await claim_one(backend)
    assert running.lease is not None
    await backend.complete([(running.lease, offload.outcome.Succeeded())])
    clock.now += TICK_WINDOW_S - 10  # a scheduler that read the record before it moved
    (again,) = await backend.enqueue([s.job(tick)])
    assert again.id == first.id and len(backend.store.jobs) == 1


async def test_worker_runs_the_scheduler() -> None:
    import asyncio

    from offload.worker.worker import Worker, WorkerConfig

    app = offload.App("memory://")
    ran: list[int] = []
    two = asyncio.Event()

    @app.task(schedule=offload.Every(seconds=1, args={"n": 7}))
    async def beat(n: int) -> None:
        ran.append(n)
        if len(ran) == 2:
            two.set()

    worker = Worker(app, WorkerConfig(poll_s=0.05))
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(10):
        await two.wait()  # the first tick after start, and the next
    await worker.stop()
    await task
    assert ran[:2] == [7, 7]


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:5672/", "beanstalk://127.0.0.1/"])
async def test_store_less_brokers_refuse_schedules_and_windows(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    import msgspec

    from offload.backends import from_url
    from offload.errors import CapabilityUnavailable
    from offload.testing.helpers import new_job

    backend = from_url(url)  # nothing here needs a connection: each refuses first
    for call in (
        backend.schedule_records(),
        backend.advance_schedule("s", 1.0, None),
        backend.set_schedule_paused("s", True),
    ):
        with pytest.raises(CapabilityUnavailable, match=r"\?store="):
            await call
    windowed = msgspec.structs.replace(new_job(key="k"), unique_for=60.0)
    with pytest.raises(CapabilityUnavailable, match="store"):
        await backend.enqueue([windowed])
    app = offload.App(backend=backend)
    app.task(name="t", schedule=offload.Every(seconds=1))(lambda: None)
    scheduler = Scheduler(list(app.schedules.values()), backend)
    async with asyncio.timeout(5):
        await scheduler.run(asyncio.Event())  # says why once, and ends
    assert "schedules cannot run on this backend" in caplog.text


async def test_ticks_go_through_the_enqueue_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    from collections.abc import Sequence

    from offload.hooks import Hooks
    from offload.job import Job, NewJob

    seen: list[tuple[str, object]] = []

    class Ear(offload.Hook):
        def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
            seen.extend(("before", j.key) for j in jobs)

        def after_enqueue(self, jobs: Sequence[Job]) -> None:
            seen.extend(("after", j.outcome) for j in jobs)

    clock, backend, _, s = setup(offload.Every(minutes=1), utc(2026, 1, 5, 12))
    hooks = Hooks()
    hooks.add(Ear())
    one, two = (Scheduler([s], backend, clock=clock, hooks=hooks) for _ in range(2))
    await one.pass_once()
    stale = await backend.schedule_records()  # what a slower scheduler read
    clock.now += 60
    await one.pass_once()

    async def stale_records() -> dict[str, object]:
        return dict(stale)

    monkeypatch.setattr(backend, "schedule_records", stale_records)
    await two.pass_once()  # the same tick again: the backend keeps the first
    key = s.key(utc(2026, 1, 5, 12, 1).timestamp())
    assert seen == [("before", key), ("after", "created"), ("before", key), ("after", "existing")]
    assert len(backend.store.jobs) == 1


async def test_a_failing_pass_does_not_end_the_scheduler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    _clock, backend, scheduler, _ = setup(offload.Every(minutes=1), utc(2026, 1, 5, 12))
    real = backend.schedule_records
    calls = 0
    stop = asyncio.Event()

    async def flaky() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a surprise")
        stop.set()
        return await real()

    monkeypatch.setattr(backend, "schedule_records", flaky)
    async with asyncio.timeout(10):
        await scheduler.run(stop)  # the second pass (a second later) works, then stops
    assert calls == 2 and "a surprise" in caplog.text
    assert "tick" in await real()
