"""How one attempt ended. The executor turns every attempt into exactly one Outcome and the
backend applies it in one call (``Backend.complete``); see each value for the transition.

Delays are relative: the backend adds them to its own clock.
"""

from __future__ import annotations

import msgspec


class Succeeded(msgspec.Struct, frozen=True, tag="succeeded"):
    """``running → succeeded``; ``result`` is the JSON of the return value (None for None)."""

    result: bytes | None = None


class RetryAt(msgspec.Struct, frozen=True, tag="retry"):
    """``running → scheduled`` at now + ``delay_s``; ``error`` is appended to the job's errors.

    The executor only returns this while attempts remain; otherwise it returns :class:`Dead`.
    """

    delay_s: float
    error: str


class Dead(msgspec.Struct, frozen=True, tag="dead"):
    """``running → dead``: attempts exhausted or the job cannot run (undecodable, unknown task)."""

    error: str


class Cancelled(msgspec.Struct, frozen=True, tag="cancelled"):
    """``running → cancelled``: the task raised :class:`offload.Cancel`."""

    reason: str


class Snoozed(msgspec.Struct, frozen=True, tag="snoozed"):
    """``running → scheduled/queued`` at now + ``delay_s`` and the attempt is given back
    (``attempt - 1``). Also used to release unfinished jobs at graceful shutdown (delay 0)."""

    delay_s: float = 0.0


Outcome = Succeeded | RetryAt | Dead | Cancelled | Snoozed


def outcome_name(outcome: Outcome | None) -> str:
    """How an attempt ended, as one word for metrics and traces; None is a lost lease."""
    if isinstance(outcome, Succeeded):
        return "succeeded"
    if isinstance(outcome, RetryAt):
        return "retried"
    if isinstance(outcome, Dead):
        return "dead"
    if isinstance(outcome, Cancelled):
        return "cancelled"
    if isinstance(outcome, Snoozed):
        return "snoozed"
    return "lost"
