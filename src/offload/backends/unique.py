"""Uniqueness with a window, and replace-on-conflict: the rule every engine applies.

``NewJob.key`` alone dedups against the *active* job of the queue holding the key. Two options
widen it (see ``Backend.enqueue``):

* ``unique_for=W`` (throttle): a job with the key created less than ``W`` seconds ago (the
  backend's clock) blocks the key whatever its state, finished ones included.
* ``on_conflict="replace"`` (debounce): when the holder is still waiting (scheduled or
  queued) and of the same task, its args, priority and run_at become the new job's; a
  running or finished holder, or one of another task, is kept as it is.

The decision is made here once; an engine finds the holder and writes what is decided, inside
the same atomic step as its insert.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import msgspec

from offload.job import ACTIVE_STATES, WAITING_STATES, EnqueueOutcome, JobRecord, JobState, NewJob


class Decision(enum.Enum):
    INSERT = "insert"
    EXISTING = "existing"
    REPLACE = "replace"


def windowed(new: NewJob) -> bool:
    """Whether enqueueing ``new`` needs more than the plain active-key dedup."""
    return new.key is not None and (new.unique_for is not None or new.on_conflict == "replace")


def decide(new: NewJob, holder: JobRecord | None, now: float) -> Decision:
    """What to do with ``new`` given ``holder``: the active job holding its (queue, key), or
    else the newest job with that key (None: no such job)."""
    if holder is None or new.key is None:
        return Decision.INSERT
    if holder.state in ACTIVE_STATES:
        replaceable = holder.state in WAITING_STATES and holder.task == new.task
        if new.on_conflict == "replace" and replaceable:
            return Decision.REPLACE
        return Decision.EXISTING
    if new.unique_for is not None and holder.created_at > now - new.unique_for:
        return Decision.EXISTING
    return Decision.INSERT


def new_run_at(new: NewJob, now: float) -> float:
    return new.run_at if new.run_at is not None else now + new.delay_s


def replaced(holder: JobRecord, new: NewJob, now: float) -> JobRecord:
    """The holder once ``new`` replaced it (for engines that build records in Python)."""
    run_at = new_run_at(new, now)
    state = JobState.QUEUED if run_at <= now else JobState.SCHEDULED
    return msgspec.structs.replace(
        holder, args=new.args, priority=new.priority, run_at=run_at, state=state
    )


def fold_replacements(jobs: Sequence[NewJob]) -> list[NewJob]:
    """A batch where a later ``on_conflict="replace"`` job with the same (queue, key) as an
    earlier one has replaced that earlier one's args, priority and time: the batch then
    collapses to the first (``common.collapse_same_key``) carrying the last one's content,
    as if they had been enqueued one after another."""
    out = list(jobs)
    first: dict[tuple[str, str], int] = {}
    for i, job in enumerate(out):
        if job.key is None:
            continue
        at = first.setdefault((job.queue, job.key), i)
        if at != i and job.on_conflict == "replace" and out[at].task == job.task:
            out[at] = msgspec.structs.replace(
                out[at],
                args=job.args,
                priority=job.priority,
                run_at=job.run_at,
                delay_s=job.delay_s,
            )
    return out


def outcome_of(new: NewJob, stored: JobRecord) -> EnqueueOutcome:
    """What an enqueue did with ``new``, from the record the backend returned for it.

    Exact under ``Backend.enqueue``'s contract: a returned record of another id is the
    holder; with ``replace`` it was replaced exactly when it was (and so still is, in the
    returned snapshot) waiting."""
    if stored.id == new.id:
        return "created"
    if new.on_conflict == "replace" and stored.state in WAITING_STATES and stored.task == new.task:
        return "replaced"
    return "existing"


def replaced_records(jobs: Sequence[NewJob], stored: Sequence[JobRecord]) -> list[JobRecord]:
    """The records an enqueue replaced (each once). A broker with a store sends each a new
    message: its old one was timed for the old ``run_at`` (and is dropped or parked when
    delivered, as any message of a job that is not due or is held elsewhere)."""
    seen: dict[str, JobRecord] = {}
    for job, rec in zip(jobs, stored, strict=True):
        if outcome_of(job, rec) == "replaced":
            seen[rec.id] = rec
    return list(seen.values())
