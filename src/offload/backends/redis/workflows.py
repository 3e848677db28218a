"""Workflows on Redis: a step's outcome and its workflow's advance in one MULTI/EXEC.

A step's completion WATCHes its job hash and its workflow's key, reads the lease and the
record, computes the advance in Python (``offload.workflow.record.on_outcome``: the rule is
written once), then runs ``complete.lua`` for the outcome, stores the new record and runs
``enqueue.lua`` for the released steps in one transaction. If either key changed in between (a
group's other member ended, the job was cancelled or re-leased), EXEC applies nothing and the
step is tried again: exactly one completion sees a group's last member end. A worker killed
before EXEC applied nothing; its job's lease runs out and it runs again.

Keys: ``{prefix}:wf:<id>`` (a hash: ``b`` the record's JSON, ``c`` created, us). On a
Cluster a workflow lives in one queue's hash slot, ``{prefix:queue}:wf:<id>``, so every step
must use that queue (enqueue says so otherwise).
"""

from __future__ import annotations

import asyncio
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

_SIDE_BY_SIDE = 4  # step transactions at once: each holds a pooled connection until EXEC
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
        """Each step in its own transaction, a few side by side (one connection each, fewer
        than the pool holds): they only wait on each other when they touch one workflow, and
        then WATCH orders them."""
        calls = [
            functools.partial(self._step, queue=where[le.job_id], lease=le, outcome=o)
            for le, o in results
            if le.job_id in where
        ]
        for i in range(0, len(calls), _SIDE_BY_SIDE):
            await asyncio.gather(*(self._run(c) for c in calls[i : i + _SIDE_BY_SIDE]))

    async def _step(
        self, client: aioredis.Redis, *, queue: str, lease: Lease, outcome: Outcome
    ) -> None:
        step = step_of(lease.job_id)
        assert step is not None
        base = self.base(queue)
        jk, wk = f"{base}:j:{lease.job_id}", self._wf_key(step[0], queue)
        for _ in range(_WATCH_TRIES):
            async with client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(jk, wk)
                    s, w, a = await pipe.hmget(jk, ["s", "w", "a"])  # type: ignore[misc]
                    rec = _decoded(await pipe.hgetall(wk))  # type: ignore[misc]
                    held = (s, w, a) == (
                        b"running",
                        lease.worker_id.encode(),
                        b"%d" % lease.attempt,
                    )
                    moved = on_outcome(rec, step[1], outcome) if held and rec else None
                    pipe.multi()  # type: ignore[no-untyped-call]
                    fields = frame(outcome_fields(lease, outcome))
                    self._eval(pipe, "complete", [base], [self._retention_arg, fields])
                    if moved is not None:
                        new, jobs = moved
                        pipe.hset(wk, "b", encode_record(new))
                        if jobs:
                            queues = list(dict.fromkeys(j.queue for j in jobs))
                            keys, argv = self._enqueue_call(jobs, queues, {})
                            self._eval(pipe, "enqueue", keys, argv)
                    await pipe.execute()
                    return
                except WatchError:
                    continue
        raise BackendUnavailable(f"workflow step {lease.job_id}: too much contention")
