"""The HTTP API's request and response bodies, as msgspec types.

These types validate what comes in, encode what goes out, and (through
``msgspec.json.schema_components``) give the OpenAPI document its schemas, so the three cannot
disagree. Times are RFC 3339 strings in UTC.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from offload.backends.limits import FAIR_PREFIX, fair_key_of
from offload.headers import HEADER_NAME_PATTERN, MAX_NAME_CHARS
from offload.job import (
    KEPT_FOREVER_S,
    PRIORITY_MAX,
    PRIORITY_MIN,
    JobRecord,
    JobRetention,
    JobState,
    WorkerInfo,
)
from offload.server.jsonlimits import too_deep
from offload.workflow.handle import WorkflowView

MAX_DELAY_S = 10 * 365 * 24 * 3600.0  # ten years: anything later is a mistake, not a schedule
NAME_PATTERN = r"^[A-Za-z0-9_.:<>\-]{1,200}$"  # the same rule as offload.task.check_name

Name = Annotated[str, Meta(pattern=NAME_PATTERN)]


# Job headers over HTTP: a subset of offload.headers' bounds that the schema can state
# exactly (8 x (64 + 400) characters stay under its 4096 in all), so a request the schema
# allows is never refused for its headers.
HttpHeaders = Annotated[
    dict[
        Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS, pattern=HEADER_NAME_PATTERN)],
        Annotated[str, Meta(max_length=400)],
    ],
    Meta(max_length=8),
]


class EnqueueRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/jobs``. ``args`` is checked against the task's signature separately."""

    task: Annotated[str, Meta(min_length=1, max_length=200)]
    args: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    queue: Name | None = None
    delay: Annotated[float, Meta(ge=0, le=MAX_DELAY_S)] | None = None
    run_at: Annotated[datetime, Meta(tz=True)] | None = None
    priority: Annotated[int, Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX)] | None = None
    max_attempts: Annotated[int, Meta(ge=1, le=1000)] | None = None
    key: Annotated[str, Meta(min_length=1, max_length=500)] | None = None
    headers: HttpHeaders | None = None  # the job's headers (offload.headers)
    unique_for: Annotated[float, Meta(ge=0, le=MAX_DELAY_S)] | None = None
    """Needs ``key``: seconds the key stays taken after its job's creation, finished or not."""
    on_conflict: Literal["keep", "replace"] = "keep"
    """``replace`` needs ``key``: the waiting job holding it takes these args and time."""


class AttemptErrorOut(msgspec.Struct, kw_only=True):
    attempt: int
    at: datetime | None
    error: str
    worker_id: str | None = None


class JobOut(msgspec.Struct, kw_only=True):
    """One job. ``result`` is the task's return value once ``state`` is ``succeeded``."""

    id: str
    task: str
    queue: str
    state: JobState
    args: Any
    priority: int
    attempt: int
    max_attempts: int
    run_at: datetime | None
    created_at: datetime | None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    key: str | None = None
    worker_id: str | None = None
    result: Any = None
    error: str | None = None
    errors: list[AttemptErrorOut] = msgspec.field(default_factory=list)
    unreadable: list[str] = msgspec.field(default_factory=list)
    """Fields stored in a form that cannot be shown (not JSON, or nested too deep): null here."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    progress: Any = None
    """The last progress the job reported: ``{"value": 0.4, "note": "..."}``, or null."""
    fair_key: str | None = None
    """Its task's ``fair_key`` argument and value (``tenant="acme"``): claims rotate among
    the values; null: none."""
    retention: dict[str, float | Literal["forever"]] | None = None
    """Its own retention (its task's ``retention=``): seconds a job finished in that state is
    kept, or ``"forever"``; a state left out keeps the backend's; null: the backend's."""


class JobList(msgspec.Struct, kw_only=True):
    """A page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    jobs: list[JobOut]
    next_cursor: str | None = None


class QueueOut(msgspec.Struct, kw_only=True):
    """One queue: jobs by state, and jobs finished per second over the last minute or so
    (null until the service has two samples to compare)."""

    name: str
    depth: int
    states: dict[str, int]
    paused: bool
    limit: int | None = None
    finished_per_s: float | None = None


class QueueList(msgspec.Struct, kw_only=True):
    queues: list[QueueOut]


class WorkerOut(msgspec.Struct, kw_only=True):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    busy: int
    started_at: datetime | None
    last_seen_at: datetime | None


class WorkerList(msgspec.Struct, kw_only=True):
    workers: list[WorkerOut]


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``code`` is stable and machine-readable; ``message`` is for people; ``argument`` names
    the offending argument or field when one can be named."""

    code: str
    message: str
    argument: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


class Status(msgspec.Struct, kw_only=True):
    status: Literal["ok", "ready", "unavailable"]


class Purged(msgspec.Struct, kw_only=True):
    deleted: int


def when(epoch_s: float | None) -> datetime | None:
    """An epoch time read from storage as a UTC datetime; None when absent or nonsensical."""
    if epoch_s is None or not isinstance(epoch_s, int | float) or not math.isfinite(epoch_s):
        return None
    try:
        return datetime.fromtimestamp(epoch_s, UTC)
    except (OverflowError, OSError, ValueError):
        return None


_UNREADABLE = object()


def _json_or_none(raw: bytes | None) -> Any:
    """Stored JSON is untrusted: what does not decode (or nests too deep to encode again) is
    shown as null and named in ``unreadable``, never a 500."""
    if raw is None:
        return None
    if too_deep(raw):
        return _UNREADABLE
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, TypeError, RecursionError):
        return _UNREADABLE


def job_out(r: JobRecord) -> JobOut:
    args, result = _json_or_none(r.args), _json_or_none(r.result)
    progress = _json_or_none(r.progress)
    shown = (("args", args), ("result", result), ("progress", progress))
    unreadable = [n for n, v in shown if v is _UNREADABLE]
    return JobOut(
        id=r.id,
        task=r.task,
        queue=r.queue,
        state=r.state,
        args=None if args is _UNREADABLE else args,
        priority=r.priority,
        attempt=r.attempt,
        max_attempts=r.max_attempts,
        run_at=when(r.run_at),
        created_at=when(r.created_at),
        started_at=when(r.started_at),
        finished_at=when(r.finished_at),
        key=r.key,
        worker_id=r.worker_id,
        result=None if result is _UNREADABLE else result,
        error=r.error,
        errors=[
            AttemptErrorOut(attempt=e.attempt, at=when(e.at), error=e.error, worker_id=e.worker_id)
            for e in r.errors
        ],
        unreadable=unreadable,
        headers=r.headers,
        progress=None if progress is _UNREADABLE else progress,
        fair_key=fair_key_out(r),
        retention=retention_out(r.retention),
    )


def fair_key_out(r: JobRecord) -> str | None:
    key = fair_key_of(r.limits)
    return None if key is None else key[len(FAIR_PREFIX) :]


def retention_out(own: JobRetention | None) -> dict[str, float | Literal["forever"]] | None:
    """A job's own retention as shown: seconds by final state, ``"forever"`` for one kept
    until purged; the states it leaves to the backend left out."""
    if own is None:
        return None
    ages = {"succeeded": own.succeeded_s, "dead": own.dead_s, "cancelled": own.cancelled_s}
    return {
        state: "forever" if age >= KEPT_FOREVER_S else age
        for state, age in ages.items()
        if age is not None
    }


def worker_out(w: WorkerInfo) -> WorkerOut:
    return WorkerOut(
        id=w.id,
        host=w.host,
        pid=w.pid,
        queues=list(w.queues),
        concurrency=w.concurrency,
        busy=w.busy,
        started_at=when(w.started_at),
        last_seen_at=when(w.last_seen_at),
    )


class ScheduleOut(msgspec.Struct, kw_only=True):
    """One schedule: declared in the app's code (``task`` null: only a stored record)."""

    name: str
    task: str | None
    schedule: str
    missed: str | None
    paused: bool
    next_run_at: datetime | None
    last_tick_at: datetime | None
    last_job_id: str | None
    last_job_state: JobState | None


class ScheduleList(msgspec.Struct, kw_only=True):
    schedules: list[ScheduleOut]


class StepOut(msgspec.Struct, kw_only=True):
    """One step of a workflow: its job's state once it has a job, else ``pending`` (or
    ``cancelled`` once the workflow failed or was cancelled)."""

    index: int
    task: str
    queue: str
    state: str
    waits_for: list[int]
    job_id: str | None = None
    result: Any = None
    error: str | None = None


class WorkflowOut(msgspec.Struct, kw_only=True):
    """A workflow: ``running``, ``succeeded``, ``failed`` or ``cancelled``, and its steps."""

    id: str
    state: str
    created_at: datetime | None
    steps: list[StepOut]
    error: str | None = None


RESPONSE_TYPES: tuple[Any, ...] = (
    EnqueueRequest,
    JobOut,
    WorkflowOut,
    JobList,
    QueueList,
    WorkerList,
    ErrorBody,
    Status,
    Purged,
    ScheduleList,
)


def workflow_out(v: WorkflowView) -> WorkflowOut:
    steps = []
    for s in v.steps:
        result = _json_or_none(bytes(s.result)) if s.result is not None else None
        steps.append(
            StepOut(
                index=s.index,
                task=s.task,
                queue=s.queue,
                state=s.state,
                waits_for=s.waits_for,
                job_id=s.job_id,
                result=None if result is _UNREADABLE else result,
                error=s.error,
            )
        )
    return WorkflowOut(
        id=v.id, state=v.state, created_at=when(v.created_at), steps=steps, error=v.error
    )
