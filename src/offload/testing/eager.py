"""Eager mode for unit tests: each job runs inline when it is enqueued, its error raised.

``EagerBackend`` is the in-memory backend that, on ``enqueue``, runs every new job at once
(a delay or ``run_at`` is ignored, as Celery's eager mode ignores a countdown): the task's
exception propagates to the caller of ``enqueue``/``aenqueue`` (the job ends ``dead`` with
it), and a job that succeeded comes back ``succeeded`` with its result, so ``job.result()``
returns at once. Jobs a task enqueues run inline too, and so do a workflow's steps, each
once the steps it waits for have ended. Sync tasks run in a thread, async ones
on the caller's loop. The app's ``before_run``/``after_run`` hooks run; there is no retry
(a task's ``Retry`` is raised like any error), and ``offload.Cancel`` cancels the job.

Use it through :func:`offload.testing.eager` (or the pytest plugin's ``offload_eager`` marker).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from offload.backends.memory import MemoryBackend
from offload.context import CURRENT, JobContext
from offload.control import Cancel
from offload.errors import describe
from offload.job import ClaimRequest, JobRecord, JobState, NewJob
from offload.outcome import Cancelled, Dead, Outcome, Succeeded
from offload.workflow.record import WorkflowRecord, step_of

if TYPE_CHECKING:
    from offload.app import App

EAGER_WORKER = "eager"
_LEASE_S = 3600.0  # an inline attempt holds its job until it returns


class EagerBackend(MemoryBackend):
    """The memory backend, running each enqueued job inline (see the module's doc)."""

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        now = [msgspec.structs.replace(j, delay_s=0.0, run_at=None) for j in jobs]
        records = super().enqueue_now(now, limits=limits)  # the memory store's write only
        for rec in {r.id: r for r in records}.values():
            if rec.state is JobState.QUEUED:
                await self._run(rec)
        return [await self.get(r.id) or r for r in records]

    def enqueue_now(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """Not the memory backend's sync path, which only stores: an eager job runs inline,
        on the backend's loop (an async task needs it), so a sync enqueue hops there as
        ``App.run_sync`` does and returns once the job has ended."""
        return self.app.run_sync(lambda _b: self.enqueue(jobs, limits=limits))

    async def enqueue_workflow(
        self, workflow: WorkflowRecord, jobs: Sequence[NewJob]
    ) -> WorkflowRecord:
        """Store the workflow, then run its first steps inline; each step that ends releases
        the next ones, which run inline in turn (see :meth:`_run_released`)."""
        now = [msgspec.structs.replace(j, delay_s=0.0, run_at=None) for j in jobs]
        stored = await super().enqueue_workflow(workflow, now)
        for job in now:
            rec = await self.get(job.id)
            if rec is not None and rec.state is JobState.QUEUED:
                await self._run(rec)
        return stored

    async def _run_released(self, job: JobRecord) -> None:
        """The steps ``job`` (a workflow step that just ended) released: run them inline."""
        step = step_of(job.id)
        if step is None:
            return
        prefix = f"{step[0]}."
        with self.store.lock:
            released = [
                j for i, j in self.store.jobs.items()
                if i.startswith(prefix) and j.state is JobState.QUEUED
            ]  # fmt: skip
        for rec in released:
            await self._run(rec)

    async def _run(self, rec: JobRecord) -> None:
        req = ClaimRequest(
            queues=(rec.queue,),
            limit=1,
            worker_id=EAGER_WORKER,
            lease_s=_LEASE_S,
            job_ids=(rec.id,),
        )
        claimed = await self.claim(req)
        if not claimed:
            return  # its queue is paused: it waits, as it would for a worker
        job = claimed[0]
        lease = job.lease
        assert lease is not None
        hooks = self.app.hooks
        hooks.starting(job)
        started = time.monotonic()
        outcome: Outcome
        token = CURRENT.set(JobContext(job, EAGER_WORKER))
        try:
            value = await self._call(job)
            outcome = Succeeded(result=None if value is None else msgspec.json.encode(value))
        except Cancel as exc:
            outcome = Cancelled(reason=exc.reason)
        except BaseException as exc:
            outcome = Dead(error=describe(exc))
            await self._end(job, outcome, started)
            raise
        finally:
            CURRENT.reset(token)
        await self._end(job, outcome, started)

    async def _call(self, job: JobRecord) -> Any:
        task = self.app.get_task(job.task)
        decoded = task.decode_args(job.args)
        if task.is_async:
            return await task.call_with(decoded)
        # A thread, so that a sync task's own sync enqueue reaches this loop without deadlock;
        # to_thread carries the job's context (current_job()) along.
        return await asyncio.to_thread(task.call_with, decoded)

    async def _end(self, job: JobRecord, outcome: Outcome, started: float) -> None:
        assert job.lease is not None
        await self.complete([(job.lease, outcome)])
        self.app.hooks.ended(job, outcome, time.monotonic() - started)
        await self._run_released(job)
