"""Workflows on Redis: steps' outcomes and their workflows' advance in one MULTI/EXEC.

A batch of step completions WATCHes its jobs' hashes and its workflows' keys, reads the leases
and records (``workflow_read.lua``), computes the advance in Python
(``offload.workflow.record.on_outcome``: the rule is written once), then runs ``complete.lua``
for the outcomes, stores the new records and runs ``enqueue.lua`` for the released steps in one
transaction: three round trips per batch. If a watched key changed in between (a group's other
member ended elsewhere, a job was cancelled or re-leased), EXEC applies nothing and the batch is
read again: exactly one completion sees a group's last member end. A worker killed before EXEC
applied nothing; its jobs' leases run out and they run again.

Keys: ``{prefix}:wf:<id>`` (a hash: ``b`` the record's JSON, ``c`` created, us). On a
Cluster a workflow lives in one queue's hash slot, ``{prefix:queue}:wf:<id>``, so every step
must use that queue (enqueue says so otherwise).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from offload.backends.redis.codec import frame, outcome_fields
from offload.backends.redis.connection import RedisConnection
from offload.errors import BackendUnavailable, CapabilityUnavailable
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

_WATCH_TRIES = 100  # a group of 100 members ending at once: each retry means another applied


def _decoded(h: Any) -> WorkflowRecord | None:
    if not h or b"b" not in h:
        return None
    try:
        rec = decode_record(h[b"b"])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return msgspec.structs.replace(rec, created_at=int(h.get(b"c", b"0")) / 1e6)


class RedisWorkflows(RedisConnection):
    """Mixed into RedisBackend."""

    def _wf_key(self, workflow_id: str, queue: str) -> str:
        if self.cluster:
            return f"{self.base(queue)}:wf:{workflow_id}"
        return f"{self._global}:wf:{workflow_id}"

    async def _wf_keys(self, workflow_id: str) -> list[str]:
        if not self.cluster:
            return [self._wf_key(workflow_id, "")]
        return [self._wf_key(workflow_id, q) for q in await self.known_queues()]

    def _enqueue_call(
        self, jobs: Sequence[NewJob], queues: Sequence[str], limits: Any
    ) -> tuple[list[str], list[Any]]:
        raise NotImplementedError  # RedisBackend's

    async def enqueue_workflow(
        self, workflow: WorkflowRecord, jobs: Sequence[NewJob]
    ) -> WorkflowRecord:
        queues = list(dict.fromkeys(s.queue for s in workflow.steps))
        if self.cluster and len(queues) > 1:
            raise CapabilityUnavailable(
                "on Redis Cluster every step of a workflow must use one queue (its keys share "
                f"that queue's hash slot); this one uses {queues}"
            )
        wk = self._wf_key(workflow.id, queues[0])
        job_queues = list(dict.fromkeys(j.queue for j in jobs))
        keys, argv = self._enqueue_call(jobs, job_queues, {})

        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            self._eval(pipe, "workflow_put", [wk], [encode_record(workflow)])
            self._eval(pipe, "enqueue", keys, argv)
            return list(await pipe.execute())

        await self._run(lambda c: c.sadd(f"{self._global}:queues", *queues))
        now, _ = await self._run(op)
        return msgspec.structs.replace(workflow, created_at=int(now) / 1e6)

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        for wk in await self._wf_keys(workflow_id):
            found = _decoded(await self._run(lambda c, k=wk: c.hgetall(k)))  # type: ignore[misc]
            if found is not None:
                return found
        return None

    async def cancel_workflow(self, workflow_id: str, reason: str) -> WorkflowRecord | None:
        for wk in await self._wf_keys(workflow_id):
            found = await self._run(lambda c, k=wk: self._cancel_at(c, k, reason))  # type: ignore[misc]
            if found is not None:
                return found
        return None

    async def _cancel_at(
        self, client: aioredis.Redis, wk: str, reason: str
    ) -> WorkflowRecord | None:
        """The record cancelled and its step jobs cancelled (cancel.lua), in one MULTI; a
        step released meanwhile changes the key and the whole is tried again."""
        for _ in range(_WATCH_TRIES):
            async with client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(wk)
                    rec = _decoded(await pipe.hgetall(wk))  # type: ignore[misc]
                    if rec is None:
                        return None
                    cancelled, active = cancel(rec, reason)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(wk, "b", encode_record(cancelled))
                    for job_id in active:
                        queue = rec.steps[int(job_id.rpartition(".")[2])].queue
                        argv = [job_id, self._retention_arg, reason]
                        self._eval(pipe, "cancel", [self.base(queue)], argv)
                    await pipe.execute()
                    return cancelled
                except WatchError:
                    continue
        raise BackendUnavailable(f"workflow {wk}: too much contention to cancel")

    async def _complete_steps(
        self, results: Sequence[tuple[Lease, Outcome]], where: dict[str, str]
    ) -> None:
        """One transaction for the batch (on a Cluster, one per queue: a workflow's keys are
        in its queue's slot)."""
        groups: dict[str, list[tuple[str, Lease, Outcome]]] = {}
        for le, o in results:
            if le.job_id in where:
                queue = where[le.job_id]
                groups.setdefault(queue if self.cluster else "", []).append((queue, le, o))
        for batch in groups.values():
            await self._run(functools.partial(self._steps, batch=batch))

    async def _steps(
        self, client: aioredis.Redis, *, batch: Sequence[tuple[str, Lease, Outcome]]
    ) -> None:
        """WATCH the steps' jobs and workflows, read them (workflow_read.lua), apply the rule,
        then in one MULTI: the outcomes (complete.lua), the records, the released steps
        (enqueue.lua). A key changed meanwhile (another completion of one of these
        workflows, a cancel) makes EXEC apply nothing: read and try again."""
        jks = [f"{self.base(q)}:j:{le.job_id}" for q, le, _ in batch]
        homes = {_wf_of(le): q for q, le, _ in batch}
        wks = {wf: self._wf_key(wf, q) for wf, q in homes.items()}
        for _ in range(_WATCH_TRIES):
            async with client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*jks, *wks.values())
                    got: list[bytes] = await pipe.execute_command(  # type: ignore[assignment]
                        "EVALSHA",
                        self._shas["workflow_read"],
                        len(jks) + len(wks),
                        *jks,
                        *wks.values(),
                        len(jks),
                    )
                    changed, released = self._advance(batch, got, list(wks))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._write_steps(pipe, batch, changed, released, wks)
                    await pipe.execute()
                    return
                except WatchError:
                    continue
        raise BackendUnavailable("workflow steps: too much contention")

    def _advance(
        self, batch: Sequence[tuple[str, Lease, Outcome]], got: Sequence[bytes], wfs: list[str]
    ) -> tuple[dict[str, WorkflowRecord], list[NewJob]]:
        off = 3 * len(batch)
        recs = {
            wf: _decoded({b"b": got[off + 2 * k], b"c": got[off + 2 * k + 1] or b"0"})
            for k, wf in enumerate(wfs)
            if got[off + 2 * k]
        }
        changed: dict[str, WorkflowRecord] = {}
        released: list[NewJob] = []
        for i, (_, lease, outcome) in enumerate(batch):
            held = tuple(got[3 * i : 3 * i + 3]) == (
                b"running",
                lease.worker_id.encode(),
                b"%d" % lease.attempt,
            )
            step = step_of(lease.job_id)
            rec = changed.get(step[0], recs.get(step[0])) if step else None
            if not held or step is None or rec is None:
                continue  # the lease had moved on: this outcome did not happen
            moved = on_outcome(rec, step[1], outcome)
            if moved is not None:
                changed[step[0]], jobs = moved
                released.extend(jobs)
        return changed, released

    def _write_steps(
        self,
        pipe: Any,
        batch: Sequence[tuple[str, Lease, Outcome]],
        changed: dict[str, WorkflowRecord],
        released: list[NewJob],
        wks: dict[str, str],
    ) -> None:
        fields: dict[str, list[bytes | str | int]] = {}
        for queue, lease, outcome in batch:
            fields.setdefault(queue, []).extend(outcome_fields(lease, outcome))
        for queue, f in fields.items():
            self._eval(pipe, "complete", [self.base(queue)], [self._retention_arg, frame(f)])
        for wf, rec in changed.items():
            pipe.hset(wks[wf], "b", encode_record(rec))
        if released:
            queues = list(dict.fromkeys(j.queue for j in released))
            keys, argv = self._enqueue_call(released, queues, {})
            self._eval(pipe, "enqueue", keys, argv)


def _wf_of(lease: Lease) -> str:
    step = step_of(lease.job_id)
    assert step is not None
    return step[0]
