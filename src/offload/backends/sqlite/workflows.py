"""The SQLite backend's workflow transactions, on the writer thread like every write.

A step's outcome and the advance of its workflow are one writer transaction: the outcome is
applied with the ordinary completion query, and only when it took effect (the lease held) is
the workflow row read, advanced by ``offload.workflow.record.on_outcome`` and written back
with the jobs it releases.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence

import msgspec

from offload.backends.sqlite.queries import Q
from offload.backends.sqlite.transactions import cancel_tx, complete_tx, enqueue_tx
from offload.errors import InvalidState
from offload.job import Lease, NewJob
from offload.outcome import Outcome
from offload.workflow.record import (
    WorkflowRecord,
    cancel,
    decode_record,
    encode_record,
    on_outcome,
    step_of,
)

_log = logging.getLogger("offload.backends.sqlite")


def enqueue_workflow_tx(
    conn: sqlite3.Connection, rec: WorkflowRecord, jobs: Sequence[NewJob]
) -> WorkflowRecord:
    stored = msgspec.structs.replace(rec, created_at=time.time())
    conn.execute(Q["insert_workflow"], (stored.id, stored.created_at, encode_record(stored)))
    enqueue_tx(conn, jobs, {})
    return stored


def _load(conn: sqlite3.Connection, workflow_id: str) -> WorkflowRecord | None:
    row = conn.execute(Q["get_workflow"], (workflow_id,)).fetchone()
    if row is None:
        return None
    try:
        return decode_record(row[0])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        _log.warning("workflow %s has an undecodable record: %s", workflow_id, exc)
        return None


def get_workflow_tx(conn: sqlite3.Connection, workflow_id: str) -> WorkflowRecord | None:
    return _load(conn, workflow_id)


def complete_and_advance_tx(
    conn: sqlite3.Connection, results: Sequence[tuple[Lease, Outcome]]
) -> bool:
    """``complete_tx``, then each step's workflow advanced in the same transaction; True when
    new jobs were released (the caller rings the doorbell)."""
    plain = [r for r in results if step_of(r[0].job_id) is None]
    if plain:
        complete_tx(conn, plain)
    released = False
    for lease, outcome in results:
        step = step_of(lease.job_id)
        if step is None:
            continue
        before = conn.total_changes
        complete_tx(conn, [(lease, outcome)])
        if conn.total_changes == before:
            continue  # the lease had moved on: this outcome did not happen
        rec = _load(conn, step[0])
        moved = on_outcome(rec, step[1], outcome) if rec is not None else None
        if moved is None:
            continue
        new, jobs = moved
        conn.execute(Q["update_workflow"], (encode_record(new), new.id))
        enqueue_tx(conn, jobs, {})
        released = released or bool(jobs)
    return released


def cancel_workflow_tx(
    conn: sqlite3.Connection, workflow_id: str, reason: str
) -> tuple[WorkflowRecord | None, list[str]]:
    rec = _load(conn, workflow_id)
    if rec is None:
        return None, []
    rec, active = cancel(rec, reason)
    conn.execute(Q["update_workflow"], (encode_record(rec), rec.id))
    ended = []
    for job_id in active:
        try:
            if cancel_tx(conn, job_id) is not None:
                ended.append(job_id)
        except InvalidState:
            pass  # it ended meanwhile: nothing to cancel
    return rec, ended
