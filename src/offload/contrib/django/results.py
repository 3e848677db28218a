"""offload's job record as Django's ``TaskResult``: status, times, errors, attempts, value."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import msgspec

from offload.contrib.django._compat import TaskError, TaskResult, TaskResultStatus
from offload.job import JobRecord, JobState

_STATUS = {
    # A job waiting for a retry is "ready to be executed again", as Django words READY.
    JobState.SCHEDULED: TaskResultStatus.READY,
    JobState.QUEUED: TaskResultStatus.READY,
    JobState.RUNNING: TaskResultStatus.RUNNING,
    JobState.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    # Django has no "cancelled": a job that will never run has failed, as far as it can tell.
    JobState.DEAD: TaskResultStatus.FAILED,
    JobState.CANCELLED: TaskResultStatus.FAILED,
}


class Payload(msgspec.Struct, frozen=True):
    """The JSON arguments of every job a Django task enqueues."""

    args: list[Any]
    kwargs: dict[str, Any]


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def when(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def error_class_path(error: str) -> str:
    """The dotted path of the exception class an attempt's error text names.

    offload records ``Type: message`` then the traceback, whose last line is the exception as
    Python prints it: ``module.Class: message``, without a module for builtins. A traceback cut
    short, or an error offload wrote itself (``lease expired (worker lost)``), names no class
    there: then the first line's type, else ``Exception``.
    """
    lines = [line for line in error.strip().splitlines() if line.strip()]
    for line in (lines[-1], lines[0]) if lines else ():
        name = line.split(":", 1)[0].strip()
        if _DOTTED.match(name):
            return name if "." in name else f"builtins.{name}"
    return "builtins.Exception"


def worker_ids(rec: JobRecord) -> list[str]:
    """One worker id per attempt started, so that ``TaskResult.attempts`` is offload's
    attempt count: failed attempts name their worker, the latest is the record's."""
    by_attempt = {e.attempt: e.worker_id for e in rec.errors}
    return [by_attempt.get(n) or rec.worker_id or "" for n in range(1, rec.attempt + 1)]


def to_result(task: Any, rec: JobRecord, alias: str) -> TaskResult:  # type: ignore[type-arg]
    payload = msgspec.json.decode(rec.args, type=Payload)
    result = TaskResult(
        task=task,
        id=rec.id,
        status=_STATUS[rec.state],
        enqueued_at=when(rec.created_at),
        started_at=when(rec.started_at),
        finished_at=when(rec.finished_at),
        last_attempted_at=when(rec.started_at),
        args=payload.args,
        kwargs=payload.kwargs,
        backend=alias,
        errors=[
            TaskError(exception_class_path=error_class_path(e.error), traceback=e.error)
            for e in rec.errors
        ],
        worker_ids=worker_ids(rec),
    )
    if rec.state is JobState.SUCCEEDED and rec.result is not None:
        object.__setattr__(result, "_return_value", msgspec.json.decode(rec.result))
    return result


def ready_result(task: Any, job_id: str, args: Any, kwargs: Any, alias: str) -> TaskResult:  # type: ignore[type-arg]
    """A result for a job not stored yet (enqueued when the transaction commits)."""
    return TaskResult(
        task=task,
        id=job_id,
        status=TaskResultStatus.READY,
        enqueued_at=None,
        started_at=None,
        finished_at=None,
        last_attempted_at=None,
        args=args,
        kwargs=kwargs,
        backend=alias,
        errors=[],
        worker_ids=[],
    )
