"""The running job's context: ``offload.current_job()`` inside a task.

The worker sets it (a context variable) for each attempt before the ``before_run`` hooks, so
the task, its hooks, and every log record emitted while it runs see it. A sync task sees it
too: its thread runs in a copy of the job's context.

It also carries cooperative cancellation: an async task is cancelled at once (the worker
cancels its asyncio task), but Python cannot stop a thread, so a sync task that runs for long
should call :meth:`JobContext.check` (or read :attr:`JobContext.cancelled`) now and then, to
stop when its job was cancelled, its lease was lost, the worker is stopping past its grace, or
its timeout has passed.
"""

from __future__ import annotations

import contextvars
import time
from typing import TYPE_CHECKING

from offload.errors import UsageError

if TYPE_CHECKING:
    from offload.job import JobRecord


class JobInterrupted(BaseException):
    """Raised by :meth:`JobContext.check` when the attempt must stop.

    A ``BaseException``, as ``asyncio.CancelledError`` is, so that a task's ``except Exception``
    does not swallow it. Let it propagate: the attempt then ends as the worker decided, whatever
    the task does next: the job was cancelled or given back (nothing more is recorded for this
    attempt), or its timeout passed (a failure, retried per the task's policy).
    """

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


class JobContext:
    """What a running attempt knows about its job. Read-only for the task.

    ``enqueued_at`` is the job's ``created_at`` (epoch seconds, the backend's clock).
    Jobs carry no headers yet, so there is no ``headers`` field.
    """

    __slots__ = ("_deadline", "_stopped", "record", "worker_id")

    def __init__(self, record: JobRecord, worker_id: str) -> None:
        # Built once per attempt on the worker's hot path: the fields below read the record.
        self.record = record
        self.worker_id = worker_id
        self._stopped: str | None = None
        self._deadline: float | None = None  # time.monotonic() when the timeout passes

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def queue(self) -> str:
        return self.record.queue

    @property
    def attempt(self) -> int:
        return self.record.attempt

    @property
    def max_attempts(self) -> int:
        return self.record.max_attempts

    @property
    def priority(self) -> int:
        return self.record.priority

    @property
    def enqueued_at(self) -> float:
        return self.record.created_at

    @property
    def key(self) -> str | None:
        return self.record.key

    def __repr__(self) -> str:
        return f"<JobContext {self.task} id={self.id} attempt={self.attempt}/{self.max_attempts}>"

    @property
    def cancelled(self) -> bool:
        """True once the attempt should stop: cancelled, lease lost, stopping, or timed out."""
        if self._stopped is not None:
            return True
        return self._deadline is not None and time.monotonic() >= self._deadline

    @property
    def timed_out(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    @property
    def remaining_s(self) -> float | None:
        """Seconds left before the task's timeout (None without one)."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def check(self) -> None:
        """Raise :class:`JobInterrupted` if the attempt should stop; otherwise return."""
        if self._stopped is not None:
            raise JobInterrupted(self._stopped)
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise JobInterrupted("the task ran longer than its timeout", timed_out=True)

    # -- the worker's side -----------------------------------------------------------------

    def start_timer(self, timeout_s: float) -> None:
        self._deadline = time.monotonic() + timeout_s

    def stop(self, reason: str) -> None:
        """Ask the attempt to stop (from the worker's loop; read from the task's thread)."""
        if self._stopped is None:
            self._stopped = reason


CURRENT: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "offload_current_job", default=None
)


def current_job() -> JobContext:
    """The job whose attempt is running here. Raises :class:`offload.UsageError` outside one
    (use ``offload.context.CURRENT.get()`` for a None instead)."""
    ctx = CURRENT.get()
    if ctx is None:
        raise UsageError("offload.current_job() was called outside a running job")
    return ctx
