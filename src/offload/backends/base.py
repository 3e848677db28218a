"""The Backend protocol: the one seam between offload and a storage engine.

Everything above this module (app, worker, server, CLI) speaks only this protocol; a backend
module is the only place that knows its engine. Each method states its contract. There are no
default implementations: a backend implements every method, and one that cannot offer an
operation declares so in :class:`Capabilities` and raises :class:`CapabilityUnavailable` from it.

Rules that hold for every method:

* Engine errors are translated inside the backend: connection trouble becomes
  :class:`offload.BackendUnavailable` (the operation did not take effect); nothing
  engine-specific escapes.
* Time (``run_at``, lease expiry, ``created_at``) comes from the backend's own clock.
* A lease is a fencing token: an operation carrying a lease that no longer matches the job's
  current (worker_id, attempt) while ``running`` is ignored, never an error.
* Methods are safe to call concurrently from one event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from offload.job import (
    ClaimRequest,
    JobFilter,
    JobPage,
    JobRecord,
    JobState,
    Lease,
    LimitUsage,
    NewJob,
    WorkerInfo,
)
from offload.outcome import Outcome
from offload.schedules import ScheduleRecord
from offload.workflow.record import WorkflowRecord


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers. Declared, never faked."""

    inspect: bool = True  # get / list_jobs / counts / workers work
    notify: bool = False  # wait_for_work wakes on new work instead of only polling
    transactional: bool = False  # can enqueue inside the caller's own transaction
    priorities: bool = True
    delayed: bool = True
    unique: bool = True  # dedup by key on enqueue
    results: bool = True  # results stored and readable
    pause: bool = True  # queues can be paused
    cross_process: bool = True  # producers and workers may live in different processes
    progress: bool = True  # set_progress stores a running job's progress
    limits: bool = False  # rate and concurrency limits (NewJob.limits) enforced at claim
    fairness: bool = False  # claims rotate among fair keys (a fair key in NewJob.limits)
    workflows: bool = False  # chains, groups and callbacks (enqueue_workflow & co.)


@runtime_checkable
class Backend(Protocol):
    capabilities: Capabilities

    @property
    def url(self) -> str:
        """The URL this backend was built from, with any password masked."""
        ...

    async def open(self) -> None:
        """Connect and create/verify storage. Idempotent. Raises BackendUnavailable."""
        ...

    async def close(self) -> None:
        """Release every connection, thread and file handle. Idempotent; safe after errors."""
        ...

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """Store ``jobs`` atomically (all or none) and return their records, in order.

        Dedup: a job whose ``key`` equals the key of an *active* job (scheduled, queued,
        running) of the same queue is not stored; the existing job's record is returned in its
        place. Two jobs with the same queue and key in one batch collapse to the first. Keys are
        scoped by queue (as Oban's are), which keeps each queue's data in one Redis Cluster slot.

        ``limits`` maps a queue to its depth limit: if storing the batch would make the number
        of waiting (scheduled + queued) jobs of a queue exceed its limit, nothing is stored and
        :class:`offload.QueueFull` is raised. Deduplicated jobs do not count.
        """
        ...

    # -- consuming -------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        """Lease at most ``req.limit`` due jobs from ``req.queues`` (not paused) and return them.

        Due: queued, or scheduled with ``run_at <= now``. Order: priority (higher first), then
        ``run_at``, then enqueue order. Each returned job is ``running`` with ``attempt``
        incremented, ``worker_id = req.worker_id``, ``started_at = now`` and its lease expiring
        at now + ``req.lease_s``. A job is never returned to two claimants while its lease holds.
        With ``req.job_ids``, only those jobs are candidates (unknown or not-due ids are
        skipped, never an error).
        """
        ...

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        """Extend each lease still held to now + ``lease_s``; return the ids still held.

        A job not in the result has been lost (expired and re-claimed, cancelled, deleted):
        its worker should stop it and drop its outcome.
        """
        ...

    async def set_progress(self, updates: Sequence[tuple[Lease, bytes]]) -> set[str]:
        """Store each running job's progress (a JSON document, replacing the last one) while
        its lease holds; return the ids written. One round trip for the batch.

        An entry whose lease no longer holds (expired and re-claimed, cancelled, finished) is
        a no-op, never an error. Progress stays on the job after it ends (the last value a
        running attempt reported) and is read back as ``JobRecord.progress``. A backend that
        keeps no job state raises :class:`offload.CapabilityUnavailable`.
        """
        ...

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        """Apply each outcome to its job in one round trip (see :mod:`offload.outcome`).

        An entry whose lease no longer holds is a no-op. Finishing clears the lease.

        A job that is a workflow step (``offload.workflow.record.step_of`` its id) advances its
        workflow in the SAME atomic write as its outcome: the record that
        ``offload.workflow.record.on_outcome`` returns is stored and the jobs it returns are
        inserted, or none of it is (a backend with ``capabilities.workflows``).
        """
        ...

    async def recover(self) -> int:
        """Put back every running job whose lease has expired; return how many.

        A job with attempts left becomes ``queued`` (the lost attempt still counts, and an
        error ``"lease expired (worker lost)"`` is appended); one with none left becomes
        ``dead``. Safe to run from many workers at once.
        """
        ...

    async def run_maintenance(self) -> int:
        """Periodic housekeeping: delete finished jobs older than the backend's retention
        (:mod:`offload.backends.retention`: by default 3 days for succeeded jobs, 14 for dead
        and cancelled ones; ``?retention=`` and ``?retention_<state>=`` in its URL) and forget
        expired worker reports. Deletes in bounded batches (one short transaction or script
        each), never one statement over the whole backlog.

        Every worker calls it every minute or so; a backend may let one caller at a time do the
        work (others return 0 at once). Returns how many jobs were deleted.
        """
        ...

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        """Return when work may be available in ``queues`` or after ``timeout_s``.

        May return early (a spurious wake is harmless: the caller claims and finds nothing).
        Backends with ``capabilities.notify`` wake on enqueue; others sleep until timeout or
        until a job becomes due, whichever is first.
        """
        ...

    async def wait_done(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """Return the job once it is in a final state, or its latest record at ``timeout_s``.

        None when no such job exists.
        """
        ...

    # -- workflows (capabilities.workflows; otherwise each raises CapabilityUnavailable) ---

    async def enqueue_workflow(
        self, workflow: WorkflowRecord, jobs: Sequence[NewJob]
    ) -> WorkflowRecord:
        """Store ``workflow`` and ``jobs`` (its first runnable steps, from
        ``offload.workflow.record.start``) atomically, in one round trip; return the record as
        stored, ``created_at`` set on the backend's clock. The ids are new (no dedup, no depth
        limit). Later steps become jobs in the completions that release them (see ``complete``).
        """
        ...

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        """The workflow's current record, or None."""
        ...

    async def cancel_workflow(self, workflow_id: str, reason: str) -> WorkflowRecord | None:
        """Mark the workflow cancelled (its steps without a job never get one) and cancel,
        as :meth:`cancel` does, each of its step jobs still scheduled, queued or running, in one
        atomic write. Idempotent; returns the record (None if unknown)."""
        ...

    # -- inspecting and steering -----------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        """The job's current record, or None."""
        ...

    async def list_jobs(self, flt: JobFilter) -> JobPage:
        """Jobs matching ``flt``, newest first (``created_at`` then id, descending)."""
        ...

    async def counts(self) -> dict[str, dict[JobState, int]]:
        """Number of jobs by queue and state (states with zero may be omitted)."""
        ...

    async def limit_usage(self) -> list[LimitUsage]:
        """Per queue and limit bucket carried by active jobs: how many run and how many wait.

        Empty when no active job carries a limit (always, on a backend that declares
        ``capabilities.limits`` False: it stores none). A form with no job store raises
        CapabilityUnavailable.
        """
        ...

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a scheduled, queued or running job; return its record (None if unknown).

        A running job's lease is revoked (its worker learns so at its next heartbeat and its
        outcome is ignored). Cancelling a cancelled job returns it unchanged; cancelling a
        succeeded or dead job raises :class:`offload.InvalidState`.
        """
        ...

    async def requeue(self, job_id: str) -> JobRecord | None:
        """Queue a dead or cancelled job again now, with its attempt count reset to 0.

        Returns its record (None if unknown); any other state raises InvalidState, and so does
        a job whose key another active job of its queue now holds (one active job per key).
        """
        ...

    async def delete(self, job_ids: Sequence[str]) -> int:
        """Delete jobs that are not running; return how many were deleted."""
        ...

    async def purge(
        self, states: Sequence[JobState], *, older_than_s: float = 0.0, queue: str | None = None
    ) -> int:
        """Delete final-state jobs in ``states`` finished more than ``older_than_s`` ago
        (of ``queue`` only, when given), in bounded batches as :meth:`run_maintenance`.

        Non-final states in ``states`` are refused with ValueError. Returns how many.
        """
        ...

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause (no claims) or resume a queue. Idempotent."""
        ...

    async def paused_queues(self) -> set[str]:
        """The queues currently paused."""
        ...

    async def report_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        """Record that a worker is alive; it is forgotten ``ttl_s`` after its last report."""
        ...

    async def remove_worker(self, worker_id: str) -> None:
        """Forget a worker at once (on its graceful exit)."""
        ...

    async def workers(self) -> list[WorkerInfo]:
        """Workers seen within their ttl, with ``last_seen_at`` on the backend's clock."""
        ...

    # -- schedule records (see offload.schedules) -------------------------------------------

    async def schedule_records(self) -> dict[str, ScheduleRecord]:
        """Every stored schedule record, by name (a schedule no scheduler has seen: absent)."""
        ...

    async def advance_schedule(self, name: str, tick: float, job_id: str | None) -> None:
        """Record that schedule ``name`` has enqueued (``job_id``) or skipped (None) ``tick``.

        Creates the record when absent. Otherwise ``last_tick`` only ever rises: a ``tick``
        not later than the stored one changes nothing; a later one replaces it, and so does
        its ``job_id`` when given. ``paused`` is untouched. Atomic, and safe from any number of
        schedulers at once (a late writer never moves the record back).
        """
        ...

    async def set_schedule_paused(self, name: str, paused: bool) -> None:
        """Pause (its scheduler enqueues no tick) or resume schedule ``name``; creates the
        record (with no ``last_tick``) when absent. Idempotent."""
        ...


@runtime_checkable
class TransactionalEnqueue(Protocol):
    """An optional ability: enqueue inside the caller's own database transaction.

    A backend that has it declares ``capabilities.transactional`` and implements this; callers
    check with ``isinstance(backend, TransactionalEnqueue)``.
    """

    async def enqueue_in(
        self, conn: Any, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """Store ``jobs`` on ``conn`` (the engine's own connection type) inside the caller's
        open transaction: visible once the caller commits, gone if it rolls back; written under
        a savepoint so :class:`offload.QueueFull` undoes only them. Dedup and depth limits as
        :meth:`Backend.enqueue`. A connection of another type raises UsageError."""
        ...


@runtime_checkable
class SyncEnqueue(Protocol):
    """An optional ability: enqueue from sync code on the caller's own thread.

    A sync caller (a Django or Flask view, a script, a sync task) then pays one round trip to
    the engine and no hop through an event loop; the app uses it when the backend has it and
    the async :meth:`Backend.enqueue` otherwise. Callers check with
    ``isinstance(backend, SyncEnqueue)``.
    """

    def enqueue_now(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """:meth:`Backend.enqueue`, blocking the calling thread: the same contract (atomic,
        dedup by key, ``limits``, :class:`offload.QueueFull`, errors translated), the same
        statements or scripts, and the jobs stored (committed, as durable as the async path
        makes them) before it returns. Workers waiting for the queue are woken as by
        :meth:`Backend.enqueue`.

        Precondition: the backend is open (on some event loop), and the caller is not that
        loop's thread (a backend may hand part of the work to its loop and wait for it). Safe
        to call from many threads at once."""
        ...


@runtime_checkable
class ClaimOnWake(Protocol):
    """An optional ability: wait for work and claim it in one round trip.

    A worker with free slots and nothing to claim waits (:meth:`Backend.wait_for_work`), then
    claims. A backend whose engine can run the claim the moment the wait ends (Redis runs a
    command sent behind a blocking pop as soon as the pop returns) hands back the leased jobs
    with the wake-up, one round trip sooner. The worker uses it when the backend has it;
    callers check with ``isinstance(backend, ClaimOnWake)``.
    """

    async def wait_and_claim(self, req: ClaimRequest, timeout_s: float) -> list[JobRecord] | None:
        """:meth:`Backend.wait_for_work` on ``req.queues`` for at most ``timeout_s``, then
        :meth:`Backend.claim` of ``req`` as the wait ends (a wake-up or the timeout): the jobs
        it leased, maybe none. None when it made no claim, and the caller claims as after
        :meth:`Backend.wait_for_work`: work was there before any wait, or the engine cannot
        claim with the wake-up this time.

        The claim is made only with the wake-up, never on its own: cancelled while it waits,
        it leased nothing; cancelled in the moment the wait ends, a job it leased comes back
        when its lease expires, as a killed worker's does."""
        ...


@runtime_checkable
class Migrating(Protocol):
    """An optional ability: a schema that ``offload migrate`` creates and upgrades."""

    async def migrate(self) -> int:
        """Apply pending migrations and return how many. Needs no ``open()`` (``open``
        refuses an out-of-date schema). Safe to run from many processes at once."""
        ...


def check_purge_states(states: Sequence[JobState]) -> None:
    """Shared precondition of :meth:`Backend.purge`."""
    active = [s for s in states if not s.final]
    if active:
        raise ValueError(f"only finished jobs can be purged, not {', '.join(active)}")
