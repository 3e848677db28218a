"""Sentry error reporting as a hook (``pip install 'offload[sentry]'``).

``app.add_hook(SentryHook())`` after ``sentry_sdk.init(...)`` reports every failed attempt:
one that will be retried (level ``warning``) and one that made its job dead (level
``error``). When the task raised, the event is that exception with its stack; otherwise (a
timeout, an undecodable job, attempts used up by lost workers) it is the error text the job
records. Each event carries the job's context, so Sentry can group, search and link it:

- tags ``offload.task``, ``offload.queue``, ``offload.outcome`` (``retry`` or ``dead``) and
  ``offload.attempt``;
- a ``offload job`` context: id, task, queue, attempt, max_attempts, worker_id, enqueued_at,
  key, the job's headers, and the retry delay.

Events are built inline on the worker's loop and sent by the SDK's own background transport,
so a slow or unreachable Sentry does not hold up jobs. Successes and cancellations report
nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from offload.context import CURRENT
from offload.errors import MissingDependency
from offload.hooks import Hook
from offload.outcome import Dead, RetryAt

try:
    import sentry_sdk
except ImportError:  # pragma: no cover - depends on what is installed
    raise MissingDependency("Sentry error reporting", "sentry") from None

if TYPE_CHECKING:
    from offload.job import JobRecord


class SentryHook(Hook):
    """Reports failed attempts to Sentry (the SDK's current client: ``sentry_sdk.init``).

    ``retries=False`` reports only the attempts that made a job dead.
    """

    def __init__(self, *, retries: bool = True) -> None:
        self._retries = retries

    def on_retry(self, job: JobRecord, outcome: RetryAt) -> None:
        if self._retries:
            self._report(job, "retry", outcome.error, {"retry_in_s": outcome.delay_s})

    def on_dead(self, job: JobRecord, outcome: Dead) -> None:
        self._report(job, "dead", outcome.error, {})

    def _report(
        self, job: JobRecord, outcome: Literal["retry", "dead"], error: str, more: dict[str, Any]
    ) -> None:
        level: Literal["warning", "error"] = "warning" if outcome == "retry" else "error"
        ctx = CURRENT.get()
        context = {
            "id": job.id,
            "task": job.task,
            "queue": job.queue,
            "attempt": job.attempt,
            "max_attempts": job.max_attempts,
            "worker_id": ctx.worker_id if ctx is not None else job.worker_id,
            "enqueued_at": job.created_at,
            "key": job.key,
            "headers": dict(job.headers),
            **more,
        }
        scope: dict[str, Any] = {
            "level": level,
            "tags": {
                "offload.task": job.task,
                "offload.queue": job.queue,
                "offload.outcome": outcome,
                "offload.attempt": str(job.attempt),
            },
            "contexts": {"offload job": context},
        }
        exc = ctx.exception if ctx is not None and ctx.record is job else None
        if exc is not None:
            sentry_sdk.capture_exception(exc, **scope)
        else:
            first = error.strip().splitlines()[0] if error.strip() else "job failed"
            sentry_sdk.capture_message(f"{job.task}: {first}", **scope)
