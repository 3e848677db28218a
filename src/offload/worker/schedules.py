"""The scheduler every worker runs: it enqueues each due tick of the app's schedules.

Any number of schedulers, in any number of processes and machines, run the same passes. Each
tick becomes one job whatever they do, because its job's key is derived from (schedule name,
tick time) and stored with a ``unique_for`` window (``offload.schedules.TICK_WINDOW_S``): the
backend's atomic dedup keeps one job per tick, even after that job has finished. No leader is
elected, so none can die holding the lead: a scheduler killed mid-pass leaves the next pass of
any other to enqueue what it did not.

The schedule record (``Backend.advance_schedule``) only tells a scheduler where to resume:
the latest tick enqueued or skipped. A schedule without one starts at the first pass that
sees it (ticks before that are not missed, they predate the schedule); a paused schedule's
ticks are skipped, so resuming it does not replay the pause.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence

from offload.backends.base import Backend
from offload.backends.unique import outcome_of
from offload.errors import BackendUnavailable, CapabilityUnavailable
from offload.hooks import Hooks
from offload.job import Job, JobRecord, NewJob
from offload.schedules import BoundSchedule, ScheduleRecord
from offload.worker.errorlog import FailureLog

log = logging.getLogger("offload.worker")

MAX_SLEEP_S = 5.0  # a pause, a resume or a new record is seen within this
SPREAD_S = 0.05  # schedulers woken by one tick do not all ask at the same instant


class Scheduler:
    """``pass_once`` enqueues what is due now; ``run`` repeats it until stopped."""

    def __init__(
        self,
        schedules: Sequence[BoundSchedule],
        backend: Backend,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        hooks: Hooks | None = None,
    ) -> None:
        self.schedules = list(schedules)
        self._hooks = hooks
        self._backend = backend
        self._clock = clock
        self._rng = rng
        self._errors = FailureLog(log, "enqueueing scheduled ticks")

    async def pass_once(self) -> float:
        """Enqueue every due tick; return the seconds until the next tick falls due."""
        records = await self._backend.schedule_records()
        now = self._clock()
        jobs: list[NewJob] = []
        marks: list[tuple[str, float, int | None]] = []  # name, tick to record, its job
        for s in self.schedules:
            mark = self._plan(s, records.get(s.name), now, jobs)
            if mark is not None:
                marks.append(mark)
        stored = await self._enqueue(jobs) if jobs else []
        for name, tick, at in marks:
            await self._backend.advance_schedule(name, tick, None if at is None else stored[at].id)
        upcoming = [s.schedule.next_after(now) for s in self.schedules]
        return max(0.0, min(upcoming, default=now + MAX_SLEEP_S) - self._clock())

    async def _enqueue(self, jobs: list[NewJob]) -> list[JobRecord]:
        """Store the ticks' jobs, through the worker's enqueue hooks (tracing, metrics) as an
        app's enqueue does; ``after_enqueue`` sees ``outcome`` "existing" for a tick another
        scheduler stored first."""
        if self._hooks is not None:
            self._hooks.enqueueing(jobs)
        stored = await self._backend.enqueue(jobs)
        if self._hooks is not None:
            app = self.schedules[0].task.app
            handles = [Job(app, r, outcome_of(n, r)) for n, r in zip(jobs, stored, strict=True)]
            self._hooks.enqueued(handles)
        return stored

    def _plan(
        self, s: BoundSchedule, rec: ScheduleRecord | None, now: float, jobs: list[NewJob]
    ) -> tuple[str, float, int | None] | None:
        """Append ``s``'s due tick jobs to ``jobs``; the record update that goes with them."""
        if rec is None or rec.last_tick is None:
            return (s.name, now, None)  # the schedule starts now
        run, latest = s.due(rec.last_tick, now)
        if latest is None:
            return None
        if rec.paused or not run:
            return (s.name, latest, None)  # skipped ticks are passed, not replayed later
        jobs.extend(s.job(t, self._rng) for t in run)
        return (s.name, latest, len(jobs) - 1 if run[-1] == latest else None)

    async def run(self, stop: asyncio.Event) -> None:
        """Pass, sleep until the next tick (at most MAX_SLEEP_S), until ``stop`` is set."""
        while not stop.is_set():
            try:
                wait = await self.pass_once()
                self._errors.succeeded()
            except CapabilityUnavailable as exc:
                log.error("schedules cannot run on this backend: %s", exc)
                return
            except BackendUnavailable as exc:
                self._errors.failed(exc)
                wait = 1.0
            except Exception as exc:  # never let a surprise end the worker's maintenance
                log.exception("scheduler pass failed")
                self._errors.failed(exc)
                wait = 1.0
            wait = min(wait, MAX_SLEEP_S) + SPREAD_S * self._rng()
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass
