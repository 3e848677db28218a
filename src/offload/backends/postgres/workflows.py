"""Workflows on PostgreSQL: stored, advanced and cancelled, each in one transaction.

A step's completion, in one transaction: lock its workflow row (``FOR UPDATE``), check and
lock its job's lease, apply the outcome with the ordinary ``complete`` query, then store the
record ``offload.workflow.record.on_outcome`` returns and insert the jobs it releases. Members
of a group that end at once queue on the row lock, so exactly one of them releases the
callback. Workflows are locked in id order, so two batches never wait on each other.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import psycopg

from offload.backends.postgres import queries as q
from offload.backends.postgres.enqueue import AsyncQueryConn, QueryConn
from offload.job import JobRecord, Lease, NewJob
from offload.outcome import Outcome
from offload.workflow.record import (
    WorkflowRecord,
    cancel,
    decode_record,
    encode_record,
    on_outcome,
    step_of,
)

_log = logging.getLogger("offload.backends.postgres")


def _decode(workflow_id: str, row: tuple[Any, ...]) -> WorkflowRecord | None:
    try:
        rec = decode_record(bytes(row[0]))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        _log.warning("workflow %s has an undecodable record: %s", workflow_id, exc)
        return None
    return msgspec.structs.replace(rec, created_at=float(row[1]))


class PostgresWorkflows:
    """Mixed into PostgresBackend, which supplies the plumbing declared here."""

    _q: Mapping[str, str]
    _channel: str
    _done_channel: str

    def _conn(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        raise NotImplementedError

    async def _rows(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _enqueue_on(
        self,
        qc: QueryConn,
        jobs: Sequence[NewJob],
        limits: Mapping[str, int] | None,
        *,
        atomic: bool,
    ) -> list[JobRecord]:
        raise NotImplementedError

    async def enqueue_workflow(
        self, workflow: WorkflowRecord, jobs: Sequence[NewJob]
    ) -> WorkflowRecord:
        async with self._conn() as conn, conn.transaction():
            qc = AsyncQueryConn(conn)
            rows = await qc.rows(
                self._q["insert_workflow"], {"id": workflow.id, "body": encode_record(workflow)}
            )
            await self._enqueue_on(qc, jobs, None, atomic=False)
        return msgspec.structs.replace(workflow, created_at=float(rows[0][0]))

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        rows = await self._rows("get_workflow", {"id": workflow_id})
        return _decode(workflow_id, rows[0]) if rows else None

    async def cancel_workflow(self, workflow_id: str, reason: str) -> WorkflowRecord | None:
        async with self._conn() as conn, conn.transaction():
            qc = AsyncQueryConn(conn)
            rows = await qc.rows(self._q["lock_workflow"], {"id": workflow_id})
            rec = _decode(workflow_id, rows[0]) if rows else None
            if rec is None:
                return None
            rec, active = cancel(rec, reason)
            await qc.rows(self._q["update_workflow"], {"id": rec.id, "body": encode_record(rec)})
            for job_id in active:  # a job that ended meanwhile matches nothing: a no-op
                await qc.rows(self._q["cancel"], {"id": job_id, "done_channel": self._done_channel})
        return rec

    async def _complete_steps(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        """Workflow steps' outcomes and their workflows' advance, in one transaction."""
        ordered = sorted(results, key=lambda r: step_of(r[0].job_id) or ("", 0))
        async with self._conn() as conn, conn.transaction():
            qc = AsyncQueryConn(conn)
            for lease, outcome in ordered:
                await self._complete_step(qc, lease, outcome)

    async def _complete_step(self, qc: AsyncQueryConn, lease: Lease, outcome: Outcome) -> None:
        step = step_of(lease.job_id)
        assert step is not None
        rows = await qc.rows(self._q["lock_workflow"], {"id": step[0]})
        held = await qc.rows(
            self._q["lock_held_lease"],
            {"id": lease.job_id, "worker_id": lease.worker_id, "attempt": lease.attempt},
        )
        params = q.complete_params([(lease, outcome)])
        channels = {"channel": self._channel, "done_channel": self._done_channel}
        await qc.rows(self._q["complete"], {**params, **channels})
        rec = _decode(step[0], rows[0]) if rows else None
        moved = on_outcome(rec, step[1], outcome) if held and rec is not None else None
        if moved is None:
            return  # the lease had moved on, or the outcome does not end the step
        new, jobs = moved
        await qc.rows(self._q["update_workflow"], {"id": new.id, "body": encode_record(new)})
        await self._enqueue_on(qc, jobs, None, atomic=False)
