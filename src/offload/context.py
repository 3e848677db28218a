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
from typing import TYPE_CHECKING, Any

import msgspec

from offload.errors import UsageError, ValidationError

if TYPE_CHECKING:
    from offload.job import JobRecord, Lease
    from offload.worker.progress import ProgressWriter


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
    """What a running attempt knows about its job. Read-only for the task, apart from
    :meth:`progress`.

    ``enqueued_at`` is the job's ``created_at`` (epoch seconds, the backend's clock);
    ``headers`` are the job's headers as enqueued (read them, do not change them).
    """

    __slots__ = ("_deadline", "_lease", "_stopped", "_writer", "exception", "record", "worker_id")

    def __init__(
        self,
        record: JobRecord,
        worker_id: str,
        writer: ProgressWriter | None = None,
        lease: Lease | None = None,
    ) -> None:
        # Built once per attempt on the worker's hot path: the fields below read the record.
        self.record = record
        self.worker_id = worker_id
        self._stopped: str | None = None
        self._deadline: float | None = None  # time.monotonic() when the timeout passes
        self._writer = writer  # where progress goes (None: a context built outside a worker)
        self._lease = lease
        # What the task raised, when the attempt failed by an exception: set before the
        # after_run/on_retry/on_dead hooks run, for hooks that report it (Sentry).
        self.exception: BaseException | None = None

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

    @property
    def headers(self) -> dict[str, str]:
        return self.record.headers

    def progress(self, value: Any, note: str | None = None) -> None:
        """Report how far the attempt has got: a fraction from 0 to 1 (``0.4``) or another
        small JSON value (``{"rows": 1200, "of": 5000}``), and an optional ``note``.

        Cheap to call often: the worker keeps the latest value and writes it at most once a
        second per job, and once more when the attempt ends; it is shown by
        ``GET /v1/jobs/{id}`` (``progress``), ``offload jobs show`` and the dashboard.
        Raises :class:`offload.ValidationError` for a value that is not JSON, a number
        outside 0..1, or a report over ``MAX_PROGRESS_BYTES``.
        """
        data = encode_progress(value, note)
        if self._writer is not None and self._lease is not None:
            self._writer.report(self._lease, data)

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


MAX_PROGRESS_BYTES = 2048  # a progress report is a status line, not a result
MAX_NOTE_CHARS = 500


def encode_progress(value: Any, note: str | None = None) -> bytes:
    """The stored form of one progress report: ``{"value": ..., "note": ...}`` as JSON."""
    if isinstance(value, bool) or (
        isinstance(value, int | float) and not (0.0 <= value <= 1.0)  # NaN fails this too
    ):
        raise ValidationError(f"progress {value!r} must be a fraction from 0 to 1")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
        raise ValidationError(f"a progress note must be a string of at most {MAX_NOTE_CHARS}")
    body: dict[str, Any] = {"value": value}
    if note is not None:
        body["note"] = note
    try:
        data = msgspec.json.encode(body)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError(f"progress must be JSON-serialisable: {exc}") from None
    if len(data) > MAX_PROGRESS_BYTES:
        raise ValidationError(f"a progress report is at most {MAX_PROGRESS_BYTES} bytes of JSON")
    return data


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
