"""Job records and the values that travel across the Backend seam.

A *job* is one persisted invocation of a task. :class:`JobRecord` is what a backend stores and
returns; :class:`Job` (at the end of this module) is the handle users hold.

Times are float seconds since the Unix epoch on the **backend's** clock (``*_at``), durations
are float seconds (``*_s``).
"""

from __future__ import annotations

import enum
import functools
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from offload.errors import JobFailed, JobNotFound, UnknownTask

if TYPE_CHECKING:
    from offload.app import App
    from offload.backends.base import Backend

PRIORITY_MIN = 0
PRIORITY_MAX = 9  # RabbitMQ's recommended x-max-priority ceiling; every backend can honour it


class JobState(enum.StrEnum):
    """Where a job is in its life.

    ``scheduled → queued → running → succeeded | scheduled (retry) | dead | cancelled``.
    """

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING})
WAITING_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED})


_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# Every pair of Crockford digits, indexed by the 10 bits they stand for: an id is 13 lookups
# (base64.b32encode is pure Python on 3.11 and took two thirds of an id's time).
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
_SHIFTS = tuple(range(120, -1, -10))  # 13 pairs of digits, most significant first


def new_job_id() -> str:
    """A 26-character, time-ordered, URL-safe id (48-bit ms timestamp + 80 random bits): the
    128-bit value in 26 Crockford base32 digits, most significant first."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in _SHIFTS])


KEPT_FOREVER_S = 1e15
"""A job's own retention for a state it keeps until purged: 1e15 s (31 million years), a
number so that every engine computes the expiry (finish + seconds) the same way."""


class JobRetention(msgspec.Struct, frozen=True, array_like=True):
    """A job's own retention (its task's ``retention=``), seconds by final state: how long
    after finishing in that state it is kept. None for a state: the backend's (its URL's)
    retention; :data:`KEPT_FOREVER_S`: until purged. Stamped at enqueue, like limits."""

    succeeded_s: float | None = None
    dead_s: float | None = None
    cancelled_s: float | None = None

    def of(self, state: JobState) -> float | None:
        """The seconds a job finished in ``state`` is kept, None for the backend's."""
        if state is JobState.SUCCEEDED:
            return self.succeeded_s
        if state is JobState.DEAD:
            return self.dead_s
        return self.cancelled_s if state is JobState.CANCELLED else None


class NewJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job to store. ``args`` is the JSON object of the task's arguments, already validated.

    The backend resolves the time to run on its own clock: ``run_at`` when given, otherwise
    now + ``delay_s``. A job whose time has come is ``queued``, otherwise ``scheduled``.
    """

    id: str
    task: str
    queue: str
    args: bytes
    priority: int = 0
    max_attempts: int = 3
    delay_s: float = 0.0
    run_at: float | None = None
    key: str | None = None
    # Small text metadata carried with the job (trace context, request ids); see
    # offload.headers for the bounds. Hooks' before_enqueue may add to it in place.
    headers: dict[str, str] = {}
    # With ``key``: how long (seconds, from the stored job's creation) the key keeps blocking
    # new jobs after that job finished (throttle); None: only while it is active.
    unique_for: float | None = None
    # With ``key``, when the job holding it is still waiting (scheduled or queued): "keep" it
    # as it is, or "replace" its args, priority and run_at with this job's (debounce).
    on_conflict: Literal["keep", "replace"] = "keep"
    limits: tuple[str, ...] = ()  # rate/concurrency buckets (offload.backends.limits)
    retention: JobRetention | None = None  # its own retention, None: the backend's


class AttemptError(msgspec.Struct, frozen=True, kw_only=True):
    """Why one attempt did not succeed (kept on the job, oldest first)."""

    attempt: int
    at: float
    error: str
    worker_id: str | None = None


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One stored job, as a backend returns it. Treat every field as untrusted input."""

    id: str
    task: str
    queue: str
    args: bytes
    state: JobState
    priority: int
    attempt: int  # attempts started so far; counted at claim time
    max_attempts: int
    run_at: float
    created_at: float
    key: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    lease_expires_at: float | None = None
    result: bytes | None = None  # JSON of the return value once succeeded
    error: str | None = None  # last error (dead), or reason (cancelled)
    errors: tuple[AttemptError, ...] = ()
    headers: dict[str, str] = {}  # as enqueued (offload.headers)
    progress: bytes | None = None  # JSON of the last progress a running attempt reported
    limits: tuple[str, ...] = ()  # rate/concurrency buckets, checked at claim
    retention: JobRetention | None = None  # its own retention (stamped at enqueue)

    @property
    def lease(self) -> Lease | None:
        if self.state is not JobState.RUNNING or self.worker_id is None:
            return None
        return Lease(job_id=self.id, worker_id=self.worker_id, attempt=self.attempt)


class Lease(msgspec.Struct, frozen=True):
    """The fencing token of one claim: a completion or heartbeat must carry it.

    Once a job's lease has moved on (expired and re-claimed, cancelled, completed), operations
    carrying the old lease are ignored.
    """

    job_id: str
    worker_id: str
    attempt: int


class ClaimRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Ask for at most ``limit`` due jobs from ``queues`` (paused queues are skipped).

    ``job_ids``, when given, narrows the candidates to those jobs (a broker delivered them and
    the state store must lease exactly these); the other rules still apply.

    ``limited_only`` narrows the candidates to jobs that carry limits (``JobRecord.limits``):
    the claim of a broker's state store for the jobs the broker never carries (see
    :mod:`offload.backends.brokered.limited`); the limits still apply. Not combined with
    ``job_ids``.
    """

    queues: tuple[str, ...]
    limit: int
    worker_id: str
    lease_s: float = 30.0
    job_ids: tuple[str, ...] | None = None
    limited_only: bool = False


class JobFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which jobs to list, newest first. ``cursor`` is the opaque value of a previous page."""

    state: JobState | None = None
    queue: str | None = None
    task: str | None = None
    args_contains: str | None = None  # substring of the stored JSON arguments
    created_after: float | None = None
    created_before: float | None = None
    cursor: str | None = None
    limit: int = 50


class JobPage(msgspec.Struct, frozen=True, kw_only=True):
    jobs: list[JobRecord]
    next_cursor: str | None = None


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a live worker reports about itself (refreshed with its heartbeats)."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    busy: int
    started_at: float
    last_seen_at: float = 0.0  # set by the backend, on its clock


QueueCounts = Mapping[str, Mapping[JobState, int]]


class LimitUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One limit bucket of a queue (``"<cap>/<period_ms>/<scope>"``, see docs/limits.md): how
    many of its jobs run (hold it) and how many wait (scheduled or queued)."""

    queue: str
    limit: str
    running: int
    waiting: int


_WAIT_SLICE_S = 30.0  # a long wait is made of bounded backend waits


EnqueueOutcome = Literal["created", "existing", "replaced"]


class Job:
    """A handle on one stored job. ``record`` is the latest snapshot; ``refresh`` updates it.

    ``outcome`` tells, on a handle returned by an enqueue, what that enqueue did: ``created``
    a new job, found an ``existing`` one holding its key, or ``replaced`` a waiting one's
    arguments (``on_conflict="replace"``). None on a handle from a look-up.
    """

    def __init__(self, app: App, record: JobRecord, outcome: EnqueueOutcome | None = None) -> None:
        self.app = app
        self.record = record
        self.outcome = outcome

    @property
    def created(self) -> bool:
        """Whether the enqueue that returned this handle stored a new job."""
        return self.outcome == "created"

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> JobState:
        return self.record.state

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def attempt(self) -> int:
        return self.record.attempt

    @property
    def error(self) -> str | None:
        return self.record.error

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} {self.state}>"

    async def arefresh(self) -> Job:
        record = await self.app.call(lambda b: b.get(self.id))
        if record is None:
            raise JobNotFound(self.id)
        self.record = record
        return self

    def refresh(self) -> Job:
        record = self.app.run_sync(lambda b: b.get(self.id))
        if record is None:
            raise JobNotFound(self.id)
        self.record = record
        return self

    async def aresult(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result.

        Raises :class:`offload.JobFailed` if it ended dead or cancelled, ``TimeoutError`` if it
        has not finished within ``timeout`` seconds (None waits as long as it takes).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.record.state.final:
            left = _WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {self.id} still {self.record.state} after {timeout}s")
            slice_s = min(left, _WAIT_SLICE_S)
            record = await self.app.call(functools.partial(_wait_done, self.id, slice_s))
            if record is None:
                raise JobNotFound(self.id)
            self.record = record
        return self._outcome()

    def result(self, timeout: float | None = None) -> Any:
        """``aresult`` for sync code."""
        return self.app.run_sync(lambda _b: self.aresult(timeout))

    def _outcome(self) -> Any:
        rec = self.record
        if rec.state is not JobState.SUCCEEDED:
            raise JobFailed(rec.id, rec.state.value, rec.error)
        try:
            return self.app.get_task(rec.task).decode_result(rec.result)
        except UnknownTask:  # a job of a task this process does not know: plain JSON
            return None if rec.result is None else msgspec.json.decode(rec.result)

    async def acancel(self) -> Job:
        record = await self.app.call(lambda b: b.cancel(self.id))
        if record is None:
            raise JobNotFound(self.id)
        self.record = record
        return self

    def cancel(self) -> Job:
        """Cancel the job (queued, scheduled or running). See ``Backend.cancel``."""
        record = self.app.run_sync(lambda b: b.cancel(self.id))
        if record is None:
            raise JobNotFound(self.id)
        self.record = record
        return self


async def _wait_done(job_id: str, timeout_s: float, backend: Backend) -> JobRecord | None:
    return await backend.wait_done(job_id, timeout_s)


__all__ = ["Job"]
