"""``redis://`` and ``rediss://`` — jobs in Redis, every state change one Lua script.

Layout (see docs/redis.md): each queue's keys share the hash tag ``{<prefix>:<queue>}``, so
each script call that touches one queue stays in one Redis Cluster slot; a few global keys
(known queues, workers) share the tag ``{<prefix>}``. Times come from the server (``TIME``
inside the scripts) as integer microseconds.

A job id does not name its queue: an instance remembers the queue of the jobs it claimed
(for heartbeats and completions); any other lookup by id asks each known queue in one
pipelined round trip. Jobs read back are untrusted: one that does not decode is skipped by
reads and put to ``dead`` when a claim meets it.

Recovery of expired leases is River's rescuer: ``expired.lua`` finds them, Python decides
(:func:`offload.backends.common.expired_lease`), ``recover.lua`` writes each decision fenced on
the lease it was taken for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from offload.backends.base import Capabilities
from offload.backends.redis.codec import (
    BLOB,
    FINAL_STATE_NAMES,
    PACKED,
    Undecodable,
    attempt_errors,
    encode_blob,
    encode_retention,
    expired_argv,
    frame,
    from_hash,
    from_us,
    outcome_fields,
    pairs,
    split_limits,
    to_us,
)
from offload.backends.redis.inspection import RedisInspection
from offload.backends.redis.schedules import RedisSchedules
from offload.backends.redis.workflows import RedisWorkflows
from offload.backends.unique import fold_replacements
from offload.errors import BackendUnavailable, QueueFull
from offload.job import ClaimRequest, JobRecord, JobState, Lease, NewJob
from offload.outcome import Dead, Outcome
from offload.workflow.record import step_of

_log = logging.getLogger("offload.backends.redis")

BATCH = 1000  # jobs one recover call handles per queue: keeps scripts short
_TIME = "return redis.call('TIME')"  # the server's clock, routed by a key on a cluster
DONE_WAIT_MARGIN_S = 5.0  # a waiter's note outlives its wait, so a finish always sees it


class RedisBackend(RedisInspection, RedisSchedules, RedisWorkflows):
    """Jobs in Redis (or anything speaking its protocol with Lua, 7.0 or later).

    Options (URL query or keyword arguments; a keyword wins): ``prefix`` (default
    ``offload``), ``retention`` and ``retention_<state>`` (how long a finished job is kept
    before :meth:`run_maintenance` deletes it: :mod:`offload.backends.retention`),
    ``timeout`` (seconds to wait for a reply, default 5), ``connect_timeout`` (default 1).
    Other query parameters go to redis-py as they are.
    """

    capabilities = Capabilities(notify=True, limits=True, fairness=True, workflows=True)

    # -- producing ---------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        if not jobs:
            return []
        jobs = fold_replacements(jobs)
        queues = list(dict.fromkeys(j.queue for j in jobs))
        limits = limits or {}
        groups = self.slot_groups(queues)
        if len(groups) > 1:
            return await self._enqueue_slots(jobs, groups, limits)
        keys, argv = self._enqueue_call(jobs, queues, limits)

        async def op(client: aioredis.Redis) -> list[Any]:
            new = self._new_queues(queues)
            if not new:  # the usual case: one command, no pipeline
                return list(await self._eval(client, "enqueue", keys, argv))
            pipe = client.pipeline(transaction=False)
            self._enqueue_commands(pipe, new, keys, argv)
            reply = list((await pipe.execute())[1])
            self._known_queues.update(new)
            return reply

        reply = await self._run(op)
        return self._enqueued(jobs, queues, reply, limits)

    def enqueue_now(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """:class:`~offload.backends.base.SyncEnqueue`: the same commands as :meth:`enqueue`,
        through redis-py's sync client on the caller's thread. A batch over several cluster
        slots (never a single job) takes the async path on the backend's loop."""
        if not jobs:
            return []
        jobs = fold_replacements(jobs)
        queues = list(dict.fromkeys(j.queue for j in jobs))
        limits = limits or {}
        if len(self.slot_groups(queues)) > 1:
            return self._on_loop(self.enqueue(jobs, limits=limits))
        if self._client is None:
            raise BackendUnavailable("the Redis backend is not open (call open() first)")
        keys, argv = self._enqueue_call(jobs, queues, limits)

        def op(client: Any) -> list[Any]:
            new = self._new_queues(queues)
            if not new:  # the usual case: one command, no pipeline
                return list(self._eval(client, "enqueue", keys, argv))
            pipe = client.pipeline(transaction=False)
            self._enqueue_commands(pipe, new, keys, argv)
            reply = list(pipe.execute()[1])
            self._known_queues.update(new)
            return reply

        reply = self._sync.run(op)
        return self._enqueued(jobs, queues, reply, limits)

    def _new_queues(self, queues: Sequence[str]) -> list[str]:
        """The queues this instance has not yet added to the set of known queues. That set
        only grows (nothing removes a queue), so once is enough; it is asked again after a
        NOSCRIPT (the server restarted or was flushed: its data may be gone too)."""
        known = self._known_queues
        return [q for q in queues if q not in known]

    def _enqueue_commands(
        self, pipe: Any, new: Sequence[str], keys: Sequence[str], argv: Sequence[Any]
    ) -> None:
        """The commands of an enqueue into queues ``new`` to this instance, on ``pipe`` (a
        sync or an async pipeline alike): they become known, then ``enqueue.lua`` runs."""
        pipe.sadd(f"{self._global}:queues", *new)
        self._eval(pipe, "enqueue", keys, argv)

    def _enqueue_call(
        self, jobs: Sequence[NewJob], queues: Sequence[str], limits: Mapping[str, int]
    ) -> tuple[list[str], list[Any]]:
        """The keys and argv of ``enqueue.lua`` for ``jobs`` (all in ``queues``)."""
        index = {q: i + 1 for i, q in enumerate(queues)}
        fields: list[bytes | str | int] = []
        for j in jobs:
            priority = min(max(j.priority, 0), 9)
            blob = encode_blob(j.task, j.args, priority, j.max_attempts, j.key, j.headers)
            run_at = "" if j.run_at is None else to_us(j.run_at)
            fields += [
                index[j.queue],
                j.id,
                blob,
                priority,
                j.max_attempts,
                run_at,
                max(to_us(j.delay_s), 0),
                j.key or "",
                "" if j.unique_for is None else max(to_us(j.unique_for), 1),
                "r" if j.on_conflict == "replace" else "",
                "\n".join(j.limits),
                encode_retention(j.retention),
            ]
        keys = [self.base(q) for q in queues]
        return keys, [frame(fields), *(limits.get(q, -1) for q in queues)]

    def _enqueued(
        self,
        jobs: Sequence[NewJob],
        queues: Sequence[str],
        reply: Sequence[Any],
        limits: Mapping[str, int],
    ) -> list[JobRecord]:
        """The records ``enqueue.lua`` stored or found (a duplicate by key); QueueFull when
        it refused the batch."""
        if reply[0] == 0:
            queue = queues[int(reply[1]) - 1]
            raise QueueFull(queue, limits[queue])
        now = int(reply[0])
        out = [self._fresh(j, now) for j in jobs]
        for k in range(1, len(reply), 3):
            pos, dup_id = int(reply[k]), reply[k + 1].decode()
            queue = jobs[pos].queue
            try:
                out[pos] = from_hash(dup_id, queue, pairs(reply[k + 2]))
            except Undecodable as exc:
                raise BackendUnavailable(f"cannot read the job the key refers to: {exc}") from None
        return out

    async def _enqueue_slots(
        self, jobs: Sequence[NewJob], groups: Sequence[Sequence[str]], limits: Mapping[str, int]
    ) -> list[JobRecord]:
        """Enqueue a batch whose queues lie in several cluster slots: one script per slot.

        All or nothing for QueueFull: the slots with a depth limit go first, one by one; when
        one is full, the jobs the earlier ones stored are withdrawn again (a job a worker
        claimed in that instant stays) and nothing of the unlimited slots is stored. Those
        cannot refuse, so they go last, together in one round trip.
        """
        queues = [q for g in groups for q in g]
        await self._run(lambda c: c.sadd(f"{self._global}:queues", *queues))
        limited = [g for g in groups if any(limits.get(q, -1) >= 0 for q in g)]
        free = [g for g in groups if g not in limited]
        found: dict[str, JobRecord] = {}
        stored: list[JobRecord] = []
        for group in limited:
            part = [j for j in jobs if j.queue in group]
            keys, argv = self._enqueue_call(part, group, limits)
            reply = await self._run(
                functools.partial(self._eval, name="enqueue", keys=keys, args=argv)
            )
            try:
                recs = self._enqueued(part, group, reply, limits)
            except QueueFull:
                await self._withdraw(stored)
                raise
            stored += [r for r, j in zip(recs, part, strict=True) if r.id == j.id]
            found.update({j.id: r for j, r in zip(part, recs, strict=True)})

        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for group in free:
                keys, argv = self._enqueue_call([j for j in jobs if j.queue in group], group, {})
                self._eval(pipe, "enqueue", keys, argv)
            return list(await pipe.execute())

        for group, reply in zip(free, await self._run(op) if free else [], strict=True):
            part = [j for j in jobs if j.queue in group]
            recs = self._enqueued(part, group, reply, {})
            found.update({j.id: r for j, r in zip(part, recs, strict=True)})
        return [found[j.id] for j in jobs]

    async def _withdraw(self, records: Sequence[JobRecord]) -> None:
        """Delete jobs this call stored, unless a worker holds them already."""
        calls: dict[str, list[str]] = {}
        for rec in records:
            calls.setdefault(rec.queue, []).append(rec.id)
        await self._per_queue("delete", calls)

    @staticmethod
    def _fresh(j: NewJob, now_us: int) -> JobRecord:
        run_at = to_us(j.run_at) if j.run_at is not None else now_us + max(to_us(j.delay_s), 0)
        return JobRecord(
            id=j.id,
            task=j.task,
            queue=j.queue,
            args=j.args,
            state=JobState.QUEUED if run_at <= now_us else JobState.SCHEDULED,
            priority=min(max(j.priority, 0), 9),
            attempt=0,
            max_attempts=j.max_attempts,
            run_at=run_at / 1e6,
            created_at=now_us / 1e6,
            key=j.key,
            headers=dict(j.headers),
            retention=j.retention,
            limits=j.limits,
        )

    # -- consuming ---------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        if req.limit <= 0 or not req.queues or req.job_ids == ():
            return []
        groups = self.slot_groups(list(dict.fromkeys(req.queues)))
        if len(groups) == 1:
            return await self._claim_slot(req, groups[0], req.limit)
        # On a cluster, one script per slot, taking what is still wanted; the slot asked
        # first turns with each call so that no queue waits behind a busy one.
        self._turn = (self._turn + 1) % len(groups)
        out: list[JobRecord] = []
        for group in groups[self._turn :] + groups[: self._turn]:
            out += await self._claim_slot(req, group, req.limit - len(out))
            if len(out) >= req.limit:
                break
        return out

    async def _claim_slot(
        self, req: ClaimRequest, queues: Sequence[str], limit: int
    ) -> list[JobRecord]:
        """Lease up to ``limit`` jobs of ``queues`` (one slot) in one script call."""
        keys = [self.base(q) for q in queues]
        argv = self._claim_argv(req, limit)
        raw = await self._run(lambda c: self._eval(c, "claim", keys, argv))
        return await self._claimed(req, queues, raw)

    @staticmethod
    def _claim_argv(req: ClaimRequest, limit: int) -> list[Any]:
        argv = [limit, req.worker_id, max(to_us(req.lease_s), 0), os.urandom(8).hex()]
        argv.append("L" if req.limited_only else "")
        if req.job_ids is not None:
            argv += dict.fromkeys(req.job_ids)  # the script takes only these, when due
        return argv

    async def _claimed(
        self, req: ClaimRequest, queues: Sequence[str], raw: bytes
    ) -> list[JobRecord]:
        """The records of the jobs ``claim.lua`` leased (its reply ``raw``); an undecodable
        one is buried as dead instead."""
        reply = PACKED.decode(raw)
        started, expires = from_us(reply[0]), from_us(reply[1])
        self._limits.after_claim(queues, reply[2], asyncio.get_running_loop().time())
        out: list[JobRecord] = []
        undecodable: list[tuple[Lease, Outcome]] = []
        for k in range(3, len(reply), 8):
            qi, raw_id, blob, attempt, run_at, created, errors, limits = reply[k : k + 8]
            job_id, queue = raw_id.decode(), queues[int(qi) - 1]
            self._queue_of[job_id] = queue
            try:
                b = BLOB.decode(blob)
                rec = JobRecord(
                    id=job_id,
                    task=b.task,
                    queue=queue,
                    args=b.args,
                    state=JobState.RUNNING,
                    priority=b.priority,
                    attempt=int(attempt),
                    max_attempts=b.max_attempts,
                    run_at=from_us(run_at),
                    created_at=from_us(created),
                    key=b.key,
                    headers=b.headers,
                    limits=split_limits(limits),
                    started_at=started,
                    worker_id=req.worker_id,
                    lease_expires_at=expires,
                    errors=attempt_errors(errors),
                )
            except (ValueError, TypeError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                _log.warning("burying undecodable job %s: %s", job_id, exc)
                lease = Lease(job_id=job_id, worker_id=req.worker_id, attempt=int(attempt))
                undecodable.append((lease, Dead(f"undecodable job record: {exc}")))
                continue
            out.append(rec)
            if rec.limits:
                self._limits.claimed[rec.id] = self.base(queue)
        if undecodable:
            await self.complete(undecodable)
        return out

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        where = await self._queues_of([lease.job_id for lease in leases])
        calls: dict[str, list[Any]] = {}
        for lease in leases:
            if lease.job_id in where:
                calls.setdefault(where[lease.job_id], [max(to_us(lease_s), 0)]).extend(
                    (lease.job_id, lease.worker_id, lease.attempt)
                )
        replies = await self._per_queue("heartbeat", calls)
        held = {i.decode() for ids in replies.values() for i in ids}
        for lease in leases:
            if lease.job_id not in held:
                self._queue_of.pop(lease.job_id, None)
        return held

    async def set_progress(self, updates: Sequence[tuple[Lease, bytes]]) -> set[str]:
        where = await self._queues_of([lease.job_id for lease, _ in updates])
        calls: dict[str, list[Any]] = {}
        for lease, progress in updates:
            if lease.job_id in where:
                calls.setdefault(where[lease.job_id], []).extend(
                    (lease.job_id, lease.worker_id, lease.attempt, bytes(progress))
                )
        replies = await self._per_queue("progress", calls)
        return {i.decode() for ids in replies.values() for i in ids}

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        where = await self._queues_of([lease.job_id for lease, _ in results])
        steps = [r for r in results if step_of(r[0].job_id) is not None]
        if steps:  # workflow steps: outcome and advance in one MULTI each (workflows.py)
            await self._complete_steps(steps, where)
        fields: dict[str, list[bytes | str | int]] = {}
        for lease, outcome in results:
            if lease.job_id in where and step_of(lease.job_id) is None:
                fields.setdefault(where[lease.job_id], []).extend(outcome_fields(lease, outcome))
        calls = {q: [self._retention_arg, frame(f)] for q, f in fields.items()}
        await self._per_queue("complete", calls)
        for lease, _ in results:
            self._queue_of.pop(lease.job_id, None)
        await self._limits.wake_freed(self._run, [lease.job_id for lease, _ in results])

    async def recover(self) -> int:
        """Put back (or bury) running jobs whose lease expired, at most BATCH per queue.

        River's rescuer: :meth:`_find_expired` finds them (with the server's time),
        :func:`offload.backends.common.expired_lease` decides each one's fate, and
        :meth:`_write_fates` writes the decisions, each fenced on the lease it was taken for.
        """
        return await self._write_fates(await self._find_expired())

    async def _find_expired(self) -> dict[str, list[Any]]:
        """The decided fates of each queue's expired leases, as ``recover.lua`` takes them."""
        queues = await self.known_queues()
        found = await self._per_queue("expired", {q: [BATCH] for q in queues})
        fates = {queue: expired_argv(reply) for queue, reply in found.items()}
        return {queue: argv for queue, argv in fates.items() if len(argv) > 1}

    async def _write_fates(self, fates: Mapping[str, Sequence[Any]]) -> int:
        """Write the fates (fenced: a job finished or re-leased since is left alone); return
        how many jobs were put back or buried."""
        calls = {queue: [self._retention_arg, *argv] for queue, argv in fates.items()}
        return sum(int(n) for n in (await self._per_queue("recover", calls)).values())

    async def run_maintenance(self) -> int:
        """Delete finished jobs past their retention (:mod:`offload.backends.retention`), in
        bounded script calls, and forget lapsed workers. Concurrent callers share the work:
        each job is deleted, and counted, once."""
        await self.workers()
        queues = await self.known_queues()
        deleted = await self._prune_own(queues)
        ages = [(state.value, age_s) for state, age_s in self.retention.pruned()]
        return deleted + await self._purge_batches(queues, ages)

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        queues = list(dict.fromkeys(queues))
        if not queues:
            await asyncio.sleep(max(timeout_s, 0.0))
            return
        wait_s = await self._wait_s(queues, timeout_s)
        if wait_s is not None:
            await self._blpop(self._wake_keys(queues), wait_s)

    async def wait_and_claim(self, req: ClaimRequest, timeout_s: float) -> list[JobRecord] | None:
        """:class:`~offload.backends.base.ClaimOnWake`: the claim script sent behind the
        blocking pop on its connection, so Redis runs it as the pop returns. On a cluster,
        and for a claim of given jobs, only the wait (None: the caller claims)."""
        queues = list(dict.fromkeys(req.queues))
        if self.cluster or req.job_ids is not None or req.limit <= 0 or not queues:
            await self.wait_for_work(queues, timeout_s)
            return None
        # The jobs of a claim whose reply is lost are not heartbeated until they come back:
        # a wait that redis-py sends again after a lost connection returns them (the claim's
        # token, below) well within their lease.
        wait_s = await self._wait_s(queues, min(timeout_s, req.lease_s / 2))
        if wait_s is None:
            return None  # work is there now: the caller claims it
        keys = [self.base(q) for q in queues]
        argv = self._claim_argv(req, req.limit)
        raw = await self._blpop_then_eval(self._wake_keys(queues), wait_s, "claim", keys, argv)
        if isinstance(raw, NoScriptError):
            return None  # a restarted or flushed server: the caller's claim loads the scripts
        if raw is None:
            # The wait ended otherwise (a half-open connection, no connection free in time)
            # and the claim may have run: run it again. With the same token (argv) it returns
            # what that run leased, or claims afresh.
            raw = await self._run(lambda c: self._eval(c, "claim", keys, argv))
        return await self._claimed(req, queues, raw)

    def _wake_keys(self, queues: Sequence[str]) -> list[str]:
        return [f"{self.base(q)}:wake" for q in queues]

    async def _wait_s(self, queues: Sequence[str], timeout_s: float) -> float | None:
        """How long a wait for work in ``queues`` should block: None when it should not
        (a queue has ready jobs, or the wait would be under a millisecond), else up to
        ``timeout_s``, shorter when a scheduled job or a limit's window comes due first."""

        async def probe(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            if self.cluster:
                # A cluster pipeline refuses keyless commands: TIME is asked of the node of
                # the first queue (the nodes' clocks only shift how long this waits).
                pipe.execute_command("EVAL", _TIME, 1, f"{self.base(queues[0])}:sched")
            else:
                pipe.time()
            for q in queues:
                pipe.exists(f"{self.base(q)}:paused")
                pipe.zcard(f"{self.base(q)}:ready")
                pipe.zrange(f"{self.base(q)}:sched", 0, 0, withscores=True)
            return list(await pipe.execute())

        reply = await self._run(probe)
        secs, micros = reply[0]
        now_us = int(secs) * 1_000_000 + int(micros)
        loop_now = asyncio.get_running_loop().time()
        for q, k in zip(queues, range(1, len(reply), 3), strict=True):
            paused, ready, first_due = reply[k : k + 3]
            if paused:
                continue
            held = self._limits.held.get(q)
            if ready and held is not None and held > loop_now:
                # Its ready jobs were held by a limit at this instance's last claim: sleep
                # until the window moves or a completion (or an enqueue) wakes the queue.
                timeout_s = min(timeout_s, held - loop_now)
                ready = 0
            if ready:
                return None
            if first_due:
                timeout_s = min(timeout_s, (first_due[0][1] - now_us) / 1e6)
        return None if timeout_s <= 0.001 else timeout_s

    async def wait_done(self, job_id: str, timeout_s: float) -> JobRecord | None:
        found = await self._locate([job_id])
        if job_id not in found:
            return None
        queue, h = found[job_id]
        base = self.base(queue)
        if h.get(b"s", b"").decode() not in FINAL_STATE_NAMES and timeout_s > 0:
            ttl_us = to_us(timeout_s + DONE_WAIT_MARGIN_S)
            argv = [job_id, ttl_us]
            # Noted first, then the state read in the same step: a finish after it signals.
            state = await self._run(lambda c: self._eval(c, "watch", [base], argv))
            if state is not None and state.decode() not in FINAL_STATE_NAMES:
                done = f"{base}:done:{job_id}"
                if await self._blpop([done], timeout_s) is not None:
                    # Pass the signal on to any other waiter on this job.
                    await self._run(lambda c: c.rpush(done, 1))
        return await self.get(job_id)
