"""What a broker backend with a state store hands to its store, said once for every broker.

The store's record is the truth (see :mod:`offload.backends.brokered.store`): reading, listing,
counting, cancelling, deleting, purging, worker reports and maintenance are the store's own
operations. Listing and counts leave out the outbox's markers (jobs of ``OUTBOX_QUEUE``), which
are bookkeeping, not jobs. Cancel needs nothing from the broker: a cancelled job's message is
dropped when it is next delivered. What involves the broker (enqueue, claim, complete,
requeue, pause) stays with each broker's backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from offload.backends.base import Backend
from offload.backends.brokered.limited import LimitedLane
from offload.backends.brokered.outbox import OUTBOX_QUEUE
from offload.job import JobFilter, JobPage, JobRecord, JobState, Lease, LimitUsage, WorkerInfo
from offload.schedules import ScheduleRecord


class StoreDelegation:
    """Mixin: the Backend methods a broker-with-a-store answers from ``self._store``."""

    _store: Backend
    _lane: LimitedLane

    async def run_maintenance(self) -> int:
        """The store's housekeeping (retention, expired worker reports)."""
        return await self._store.run_maintenance()

    async def wait_done(self, job_id: str, timeout_s: float) -> JobRecord | None:
        return await self._store.wait_done(job_id, timeout_s)

    async def set_progress(self, updates: Sequence[tuple[Lease, bytes]]) -> set[str]:
        """In the store, which holds the lease the broker's claim took there."""
        return await self._store.set_progress(updates)

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._store.get(job_id)

    async def list_jobs(self, flt: JobFilter) -> JobPage:
        """The store's page without outbox markers (so a page may hold fewer than asked)."""
        page = await self._store.list_jobs(flt)
        if not any(j.queue == OUTBOX_QUEUE for j in page.jobs):
            return page
        jobs = [j for j in page.jobs if j.queue != OUTBOX_QUEUE]
        return JobPage(jobs=jobs, next_cursor=page.next_cursor)

    async def counts(self) -> dict[str, dict[JobState, int]]:
        counts = await self._store.counts()
        counts.pop(OUTBOX_QUEUE, None)
        return counts

    async def limit_usage(self) -> list[LimitUsage]:
        return await self._store.limit_usage()

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel in the store; the job's message is dropped when it is next delivered (a
        job with limits has none; cancelling it may free a slot for another)."""
        rec = await self._store.cancel(job_id)
        if rec is not None and rec.limits:
            self._lane.note()
        return rec

    async def delete(self, job_ids: Sequence[str]) -> int:
        return await self._store.delete(job_ids)

    async def purge(
        self, states: Sequence[JobState], *, older_than_s: float = 0.0, queue: str | None = None
    ) -> int:
        return await self._store.purge(states, older_than_s=older_than_s, queue=queue)

    async def paused_queues(self) -> set[str]:
        return await self._store.paused_queues()

    async def report_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        await self._store.report_worker(info, ttl_s)

    async def remove_worker(self, worker_id: str) -> None:
        await self._store.remove_worker(worker_id)

    async def workers(self) -> list[WorkerInfo]:
        return await self._store.workers()

    async def schedule_records(self) -> dict[str, ScheduleRecord]:
        return await self._store.schedule_records()

    async def advance_schedule(self, name: str, tick: float, job_id: str | None) -> None:
        await self._store.advance_schedule(name, tick, job_id)

    async def set_schedule_paused(self, name: str, paused: bool) -> None:
        await self._store.set_schedule_paused(name, paused)
