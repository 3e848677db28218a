"""Turns one attempt of a job into exactly one Outcome.

Async tasks run on the worker's loop; sync tasks run in the worker's thread pool. Whatever the
task does — returns, raises, asks for a retry, times out — the result is one Outcome value that
the backend applies in one call. A stored job that cannot run (unknown task, arguments that do
not decode) ends ``dead`` with the reason, and the worker keeps going.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import TYPE_CHECKING, Any

import msgspec

from offload.context import JobContext, JobInterrupted
from offload.control import Cancel, Retry, Snooze
from offload.errors import ValidationError, describe
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Snoozed, Succeeded

if TYPE_CHECKING:
    from offload.app import App
    from offload.job import JobRecord
    from offload.task import Task
    from offload.worker.threads import TaskThreads

MAX_ERROR_CHARS = 8000  # a traceback is for a human; a huge one would bloat every row


async def execute(app: App, job: JobRecord, pool: TaskThreads, ctx: JobContext) -> Outcome:
    """Run one attempt of ``job``. Cancellation (shutdown, lost lease) propagates.

    ``ctx`` is the attempt's context; its timer starts here when the task has a timeout.
    """
    task = app.tasks.get(job.task)
    if task is None:
        return Dead(error=f"UnknownTask: no task named {job.task!r} is registered in this worker")
    try:
        decoded = task.decode_args(job.args)
    except ValidationError as exc:
        return Dead(error=f"undecodable job: {exc}")
    if task.config.timeout_s is not None:
        ctx.start_timer(task.config.timeout_s)
    try:
        result = await _call(task, decoded, pool)
    except Retry as exc:
        delay = exc.delay if exc.delay is not None else task.config.retry.delay_s(job.attempt)
        return _failed(job, f"Retry: {exc.reason}", delay)
    except Cancel as exc:
        return Cancelled(reason=exc.reason)
    except Snooze as exc:
        return Snoozed(delay_s=exc.delay)
    except TimeoutError:
        return _timed_out(task, job)
    except JobInterrupted as exc:
        # ctx.check() saw the deadline before the worker's own timer fired. A stop request
        # (lost lease, stop past the grace) cancels this coroutine at the same moment, so it
        # rarely lands here; if it does, the attempt is given back, as a stop gives it back.
        if exc.timed_out:
            return _timed_out(task, job)
        return Snoozed(delay_s=0.0)
    except Exception as exc:
        ctx.exception = exc  # for hooks that report the exception itself (offload.contrib.sentry)
        return _failed(job, _format_error(exc), task.retry_policy.delay_s(type(exc), job.attempt))
    try:
        return Succeeded(result=None if result is None else msgspec.json.encode(result))
    except (TypeError, msgspec.EncodeError) as exc:
        return Dead(error=f"the task's return value is not JSON-serialisable: {describe(exc)}")


async def _call(task: Task[Any, Any], decoded: msgspec.Struct, pool: TaskThreads) -> Any:
    timeout = task.config.timeout_s
    call = task.call_with(decoded) if task.is_async else pool.submit(task.call_with, decoded)
    if timeout is None:
        return await call
    # A thread cannot be killed: on timeout the attempt fails, the thread finishes on its own.
    async with asyncio.timeout(timeout):
        return await call


def _timed_out(task: Task[Any, Any], job: JobRecord) -> Outcome:
    error = f"TimeoutError: the task ran longer than its timeout of {task.config.timeout_s}s"
    return _failed(job, error, task.retry_policy.delay_s(TimeoutError, job.attempt))


def _failed(job: JobRecord, error: str, delay_s: float | None) -> Outcome:
    """Retry after ``delay_s``; dead when attempts are spent or the task's retry policy
    gives up on this error (``delay_s`` None)."""
    if delay_s is None or job.attempt >= job.max_attempts:
        return Dead(error=error)
    return RetryAt(delay_s=delay_s, error=error)


def _format_error(exc: BaseException) -> str:
    text = describe(exc) + "\n" + "".join(traceback.format_exception(exc))
    return (
        text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 20] + "\n...[truncated]"
    )
