"""The memory backend's workflow writes; each runs under the store's lock, the caller's."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from offload.backends.common import new_record
from offload.backends.memory.store import MemoryStore, finish
from offload.job import ACTIVE_STATES, JobRecord, JobState, NewJob
from offload.outcome import Outcome
from offload.workflow.record import WorkflowRecord, cancel, on_outcome, step_of


def insert(st: MemoryStore, jobs: Sequence[NewJob], now: float) -> None:
    for new in jobs:
        st.jobs[new.id] = new_record(new, now)
        st.seq[new.id] = st.next_seq
        st.next_seq += 1


def store_workflow(
    st: MemoryStore, rec: WorkflowRecord, jobs: Sequence[NewJob], now: float
) -> WorkflowRecord:
    stored = msgspec.structs.replace(rec, created_at=now)
    st.workflows[rec.id] = stored
    insert(st, jobs, now)
    return stored


def advance(st: MemoryStore, job_id: str, outcome: Outcome, now: float) -> bool:
    """Advance the workflow ``job_id`` is a step of; True when it released new jobs."""
    step = step_of(job_id)
    rec = st.workflows.get(step[0]) if step is not None else None
    if step is None or rec is None:
        return False
    moved = on_outcome(rec, step[1], outcome)
    if moved is None:
        return False
    st.workflows[rec.id], jobs = moved
    insert(st, jobs, now)
    return bool(jobs)


def cancel_workflow(
    st: MemoryStore, workflow_id: str, reason: str, now: float
) -> tuple[WorkflowRecord | None, list[str]]:
    """The cancelled record and the ids of the step jobs cancelled with it."""
    rec = st.workflows.get(workflow_id)
    if rec is None:
        return None, []
    rec, active = cancel(rec, reason)
    st.workflows[rec.id] = rec
    done: list[str] = []
    for job_id in active:
        j: JobRecord | None = st.jobs.get(job_id)
        if j is not None and j.state in ACTIVE_STATES:
            st.jobs[job_id] = finish(j, JobState.CANCELLED, now, error=reason)
            done.append(job_id)
    return rec, done
