"""Workflows on PostgreSQL: stored, advanced and cancelled, each in one transaction.

A batch of step completions, in one transaction: lock their workflow rows (``FOR UPDATE``, in
id order, so two batches never wait on each other), find and lock the jobs whose lease holds,
apply the outcomes with the ordinary ``complete`` query, then store the records
``offload.workflow.record.on_outcome`` returns and insert the jobs they release. Members of a
group that end at once queue on the row lock, so exactly one of them releases the callback.
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
        """Workflow steps' outcomes and their workflows' advance, in one transaction of a few
        statements whatever the batch's size: lock the workflows, find the leases that hold,
        apply every outcome, write the advanced records and the released jobs."""
        ids = sorted({s[0] for s in map(step_of, (le.job_id for le, _ in results)) if s})
        async with self._conn() as conn, conn.transaction():
            qc = AsyncQueryConn(conn)
            rows = await qc.rows(self._q["lock_workflows"], {"ids": ids})
            records = {r[0]: rec for r in rows if (rec := _decode(r[0], r[1:])) is not None}
            leases = {
                "ids": [le.job_id for le, _ in results],
                "worker_ids": [le.worker_id for le, _ in results],
                "attempts": [le.attempt for le, _ in results],
            }
            held = {r[0] for r in await qc.rows(self._q["held_leases"], leases)}
            params = q.complete_params(results)
            channels = {"channel": self._channel, "done_channel": self._done_channel}
            await qc.rows(self._q["complete"], {**params, **channels})
            changed: dict[str, WorkflowRecord] = {}
            released: list[NewJob] = []
            for lease, outcome in results:
                step = step_of(lease.job_id)
                rec = changed.get(step[0], records.get(step[0])) if step else None
                if step is None or rec is None or lease.job_id not in held:
                    continue  # the lease had moved on: this outcome did not happen
                moved = on_outcome(rec, step[1], outcome)
                if moved is not None:
                    changed[rec.id], jobs = moved
                    released.extend(jobs)
            if changed:
                bodies = {
                    "ids": list(changed),
                    "bodies": list(map(encode_record, changed.values())),
                }
                await qc.rows(self._q["update_workflows"], bodies)
            if released:
                await self._enqueue_on(qc, released, None, atomic=False)
