"""The error tree: one root, :class:`OffloadError`, and a leaf per thing a caller can act on.

Backend-native errors (sqlite3, redis, psycopg, aio-pika) are translated into these inside the
backend module and never escape it.
"""

from __future__ import annotations

from typing import Any


class OffloadError(Exception):
    """Root of every error offload raises on purpose."""


class ConfigurationError(OffloadError):
    """The app, a task, a URL or an option is wrongly configured."""


class MissingDependency(ConfigurationError):
    """A backend or feature needs an optional extra that is not installed."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(f"{feature} needs an optional dependency: pip install 'offload[{extra}]'")
        self.feature = feature
        self.extra = extra


class ValidationError(OffloadError, ValueError):
    """Arguments (or options) do not match what the task accepts. Nothing was stored.

    ``argument`` names the offending argument when one can be named.
    """

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class UnknownTask(OffloadError, LookupError):
    """No task is registered under this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no task named {name!r} is registered")
        self.name = name


class JobNotFound(OffloadError, LookupError):
    """No job with this id is stored (it never existed or retention removed it)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class WorkflowNotFound(JobNotFound):
    """No workflow with this id is stored (``job_id`` holds the workflow's id)."""

    def __init__(self, workflow_id: str) -> None:
        OffloadError.__init__(self, f"no workflow with id {workflow_id!r}")
        self.job_id = workflow_id


class QueueFull(OffloadError):
    """The queue is at its depth limit; nothing was enqueued. Try again later."""

    def __init__(self, queue: str, limit: int, retry_after_s: float = 1.0) -> None:
        super().__init__(f"queue {queue!r} is full ({limit} jobs waiting), try later")
        self.queue = queue
        self.limit = limit
        self.retry_after_s = retry_after_s


class BackendUnavailable(OffloadError):
    """The backend cannot be reached right now. The operation did not take effect."""


class StorageFull(BackendUnavailable):
    """The backend's storage has no space left (the disk under an SQLite file, say). Nothing
    was written. Every write fails the same way until space is freed; then work resumes by
    itself. A :class:`BackendUnavailable`, so whatever retries an outage retries this too."""


class CapabilityUnavailable(OffloadError):
    """The backend does not offer this operation (e.g. inspection without a state store)."""


class InvalidState(OffloadError):
    """The job is not in a state that allows this operation (e.g. retrying a running job)."""


class JobFailed(OffloadError):
    """The job ended without success (dead or cancelled); ``error`` carries why."""

    def __init__(self, job_id: str, state: str, error: str | None) -> None:
        super().__init__(f"job {job_id} ended {state}: {error or 'no error recorded'}")
        self.job_id = job_id
        self.state = state
        self.error = error


class UsageError(OffloadError):
    """The API was called in a way that cannot work (e.g. sync enqueue on the app's own loop)."""


def describe(exc: BaseException) -> str:
    """One line naming an exception: ``Type: message``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first_line(value: Any) -> str:
    return str(value).strip().splitlines()[0] if str(value).strip() else ""
