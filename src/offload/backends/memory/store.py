"""The memory backend's state and its record transitions, apart from the Backend methods.

:class:`MemoryStore` is what several backend instances share; the functions below turn one
record into the next (one finished attempt, one expired lease), pure and lock-free: the caller
holds the store's lock.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from offload.backends.common import expired_lease
from offload.job import AttemptError, JobFilter, JobRecord, JobState, WorkerInfo
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Succeeded
from offload.schedules import ScheduleRecord
from offload.workflow.record import WorkflowRecord

Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


@dataclass
class MemoryStore:
    """The shared state of memory backends. Create one and pass it as ``store=``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    next_seq: int = 0
    paused: set[str] = field(default_factory=set)
    workers: dict[str, tuple[WorkerInfo, float]] = field(default_factory=dict)
    work_waiters: list[Waiter] = field(default_factory=list)
    done_waiters: dict[str, list[Waiter]] = field(default_factory=dict)
    schedules: dict[str, ScheduleRecord] = field(default_factory=dict)
    rate_log: dict[str, list[float]] = field(default_factory=dict)  # claim times per bucket
    workflows: dict[str, WorkflowRecord] = field(default_factory=dict)
    turns: dict[tuple[str, str], int] = field(default_factory=dict)  # fair lanes' turns

    def wake(self, waiters: Sequence[Waiter]) -> None:
        for loop, fut in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def released(j: JobRecord) -> JobRecord:
    return msgspec.structs.replace(j, worker_id=None, lease_expires_at=None)


def finish(
    j: JobRecord,
    state: JobState,
    now: float,
    *,
    error: str | None = None,
    result: bytes | None = None,
    add: AttemptError | None = None,
) -> JobRecord:
    errors = (*j.errors, add) if add is not None else j.errors
    return msgspec.structs.replace(
        released(j), state=state, finished_at=now, error=error, result=result, errors=errors
    )


def apply_outcome(j: JobRecord, outcome: Outcome, now: float) -> JobRecord:
    """The one state transition for a finished attempt (see offload.outcome)."""
    if isinstance(outcome, Succeeded):
        return finish(j, JobState.SUCCEEDED, now, result=outcome.result)
    if isinstance(outcome, Dead):
        err = AttemptError(attempt=j.attempt, at=now, error=outcome.error, worker_id=j.worker_id)
        return finish(j, JobState.DEAD, now, error=outcome.error, add=err)
    if isinstance(outcome, Cancelled):
        return finish(j, JobState.CANCELLED, now, error=outcome.reason)
    if isinstance(outcome, RetryAt):
        err = AttemptError(attempt=j.attempt, at=now, error=outcome.error, worker_id=j.worker_id)
        return msgspec.structs.replace(
            released(j),
            state=JobState.SCHEDULED,
            run_at=now + outcome.delay_s,
            errors=(*j.errors, err),
        )
    # Snoozed: the attempt is given back.
    delay = outcome.delay_s
    return msgspec.structs.replace(
        released(j),
        state=JobState.QUEUED if delay <= 0 else JobState.SCHEDULED,
        run_at=now + delay,
        attempt=max(j.attempt - 1, 0),
    )


def matches(j: JobRecord, f: JobFilter) -> bool:
    return (
        (f.state is None or j.state is f.state)
        and (f.queue is None or j.queue == f.queue)
        and (f.task is None or j.task == f.task)
        and (f.args_contains is None or f.args_contains.encode() in j.args)
        and (f.created_after is None or j.created_at >= f.created_after)
        and (f.created_before is None or j.created_at < f.created_before)
    )


def expired(j: JobRecord, now: float) -> JobRecord:
    """``j`` (running, its lease expired at or before ``now``) as the common rule decides."""
    fate = expired_lease(j.attempt, j.max_attempts, j.worker_id, now)
    if fate.dead:
        return finish(j, JobState.DEAD, now, error=fate.error.error, add=fate.error)
    return msgspec.structs.replace(
        released(j), state=fate.state, run_at=now, errors=(*j.errors, fate.error)
    )


def purge_batch(st: MemoryStore, doomed_if: Callable[[JobRecord], bool], limit: int) -> int:
    """Delete at most ``limit`` jobs for which ``doomed_if`` holds; return how many. The
    caller holds the lock, for one batch only, so a big purge does not stall the threads that
    share the store."""
    doomed = [j.id for j in st.jobs.values() if doomed_if(j)][:limit]
    for job_id in doomed:
        del st.jobs[job_id]
        st.seq.pop(job_id, None)
    return len(doomed)
