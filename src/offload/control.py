"""Exceptions a task raises to steer its own job.

They are control flow, not failures: the executor turns each into an :mod:`offload.outcome`.
"""

from __future__ import annotations


class Retry(Exception):
    """Ask for another attempt, after ``delay`` seconds (the task's backoff when ``None``).

    Counts as an attempt: once ``max_attempts`` is reached the job goes to ``dead``.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        if delay is not None and delay < 0:
            raise ValueError("Retry delay must be >= 0 seconds")
        self.delay = delay
        self.reason = reason


class Cancel(Exception):
    """Stop this job for good: it ends ``cancelled`` and is never retried."""

    def __init__(self, reason: str = "cancelled by task") -> None:
        super().__init__(reason)
        self.reason = reason


class Snooze(Exception):
    """Run again after ``delay`` seconds without using up an attempt."""

    def __init__(self, delay: float) -> None:
        if delay < 0:
            raise ValueError("Snooze delay must be >= 0 seconds")
        super().__init__(f"snoozed for {delay}s")
        self.delay = delay
