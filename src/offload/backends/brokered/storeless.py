"""What a broker without a state store cannot do, said once for every such broker.

A store-less form (``amqp://`` or ``beanstalk://`` without ``?store=``) carries each job in its
message: there is no record to read, list, count, cancel, requeue, delete or purge, no place for
worker reports, pause flags or progress. :class:`StoreLess` declares each of those Backend
methods as raising :class:`~offload.errors.CapabilityUnavailable` with the broker's own hint
(how to add a store), so nothing answers silently; worker reports are accepted and dropped,
since a worker makes them whether or not anyone can read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, NoReturn

from offload.backends.base import Capabilities
from offload.errors import CapabilityUnavailable
from offload.job import (
    JobFilter,
    JobPage,
    JobRecord,
    JobState,
    Lease,
    LimitUsage,
    NewJob,
    WorkerInfo,
)
from offload.schedules import ScheduleRecord
from offload.workflow.record import WorkflowRecord

STORE_LESS = Capabilities(
    inspect=False,
    notify=True,
    transactional=False,
    priorities=True,
    delayed=True,
    unique=False,
    results=False,
    pause=False,
    progress=False,
    cross_process=True,
)
"""What a store-less broker form offers: delivery, priorities, delays and wake-ups only."""


class StoreLess:
    """Mixin for a store-less broker backend; ``STORE_HINT`` names the fix for its URL."""

    STORE_HINT: ClassVar[str]

    def _unavailable(self, what: str) -> NoReturn:
        raise CapabilityUnavailable(f"{what} needs a state store: {self.STORE_HINT}")

    async def set_progress(self, updates: Sequence[tuple[Lease, bytes]]) -> set[str]:
        self._unavailable("progress")

    async def enqueue_workflow(
        self, workflow: WorkflowRecord, jobs: Sequence[NewJob]
    ) -> WorkflowRecord:
        self._unavailable("a workflow")

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        self._unavailable("a workflow")

    async def cancel_workflow(self, workflow_id: str, reason: str) -> WorkflowRecord | None:
        self._unavailable("a workflow")

    async def report_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        """Nowhere to keep it: a no-op (``workers()`` says why)."""

    async def remove_worker(self, worker_id: str) -> None:
        """Nothing was kept: a no-op."""

    async def workers(self) -> list[WorkerInfo]:
        self._unavailable("the list of workers")

    async def wait_done(self, job_id: str, timeout_s: float) -> JobRecord | None:
        self._unavailable("waiting for a job's result")

    async def get(self, job_id: str) -> JobRecord | None:
        self._unavailable("a job's status")

    async def list_jobs(self, flt: JobFilter) -> JobPage:
        self._unavailable("listing jobs")

    async def counts(self) -> dict[str, dict[JobState, int]]:
        self._unavailable("counting jobs")

    async def limit_usage(self) -> list[LimitUsage]:
        self._unavailable("counting jobs held by limits")

    async def cancel(self, job_id: str) -> JobRecord | None:
        self._unavailable("cancelling a job")

    async def requeue(self, job_id: str) -> JobRecord | None:
        self._unavailable("retrying a job")

    async def delete(self, job_ids: Sequence[str]) -> int:
        self._unavailable("deleting jobs")

    async def purge(
        self, states: Sequence[JobState], *, older_than_s: float = 0.0, queue: str | None = None
    ) -> int:
        self._unavailable("purging jobs")

    async def set_paused(self, queue: str, paused: bool) -> None:
        self._unavailable("pausing a queue")

    async def paused_queues(self) -> set[str]:
        self._unavailable("paused queues")

    async def schedule_records(self) -> dict[str, ScheduleRecord]:
        self._unavailable("schedules")

    async def advance_schedule(self, name: str, tick: float, job_id: str | None) -> None:
        self._unavailable("schedules")

    async def set_schedule_paused(self, name: str, paused: bool) -> None:
        self._unavailable("pausing a schedule")
