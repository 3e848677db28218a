"""Actions on many jobs at once: every job matching a filter, or every job of a dead group.

A bulk action is two requests. The confirmation page counts the jobs the action applies to
and fixes the moment of counting (``until``); the POST lists the same filter again, bounded by
that moment so jobs created since are left alone, and acts on those jobs one by one. What it
did is reported as counts, so a job that changed state in between is visible as "skipped".
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from offload.backends.base import Backend
from offload.errors import InvalidState
from offload.job import JobFilter, JobRecord, JobState
from offload.server.dashboard.core import PageError

BULK_MAX = 50_000  # more than this at once is a job for the CLI or a script, not a browser
_PAGE = 500


class Action(enum.StrEnum):
    RETRY = "retry"
    CANCEL = "cancel"
    DELETE = "delete"

    @property
    def states(self) -> frozenset[JobState]:
        """The states a job must be in for this action to apply to it."""
        if self is Action.RETRY:
            return frozenset({JobState.DEAD, JobState.CANCELLED})
        if self is Action.CANCEL:
            return frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING})
        return frozenset(JobState) - {JobState.RUNNING}

    @property
    def past(self) -> str:
        return {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}[self.value]


class TooMany(PageError):
    """More than BULK_MAX jobs match: a 422 page saying so (not a bare 500)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            422,
            "Too many jobs",
            f"More than {limit:,} jobs match this filter. Narrow it (queue, task, state, time) "
            "or use the CLI or a script for this many jobs.",
        )


async def matching(backend: Backend, flt: JobFilter, action: Action) -> list[JobRecord]:
    """Every job matching ``flt`` (its cursor and limit ignored) that ``action`` applies to."""
    states = [flt.state] if flt.state is not None else sorted(action.states)
    out: list[JobRecord] = []
    for state in states:
        if state not in action.states:
            continue
        cursor: str | None = None
        while True:
            page = await backend.list_jobs(
                JobFilter(
                    state=state,
                    queue=flt.queue,
                    task=flt.task,
                    args_contains=flt.args_contains,
                    created_after=flt.created_after,
                    created_before=flt.created_before,
                    cursor=cursor,
                    limit=_PAGE,
                )
            )
            out.extend(page.jobs)
            if len(out) > BULK_MAX:
                raise TooMany(BULK_MAX)
            cursor = page.next_cursor
            if cursor is None:
                break
    return out


@dataclass(frozen=True)
class Outcome:
    done: int
    skipped: int


async def apply(backend: Backend, action: Action, job_ids: Sequence[str]) -> Outcome:
    """Apply ``action`` to each job; a job no longer in a fitting state is skipped."""
    if action is Action.DELETE:
        done = 0
        for start in range(0, len(job_ids), _PAGE):
            done += await backend.delete(job_ids[start : start + _PAGE])
        return Outcome(done=done, skipped=len(job_ids) - done)
    done = 0
    for job_id in job_ids:
        try:
            if action is Action.RETRY:
                ok = await backend.requeue(job_id) is not None
            else:
                record = await backend.cancel(job_id)
                ok = record is not None and record.state is JobState.CANCELLED
        except InvalidState:
            ok = False
        done += ok
    return Outcome(done=done, skipped=len(job_ids) - done)
