"""Inspecting and steering jobs in Redis: get, list, counts, cancel, requeue, delete,
purge, pause, and the worker registry. Reads are untrusted: a job that does not decode is
skipped (and logged), never a crash.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from offload.backends.base import check_purge_states
from offload.backends.common import decode_cursor, encode_cursor
from offload.backends.redis.codec import (
    WORKER,
    Undecodable,
    from_hash,
    from_us,
    matches,
    pairs,
    to_us,
)
from offload.backends.redis.connection import RedisConnection
from offload.backends.redis.limits import limit_usage as redis_limit_usage
from offload.backends.retention import PRUNE_BATCH
from offload.errors import InvalidState
from offload.job import JobFilter, JobPage, JobRecord, JobState, LimitUsage, WorkerInfo

_log = logging.getLogger("offload.backends.redis")


def _position(cursor: str) -> tuple[int, str]:
    """A list cursor's (created_at in us, job id): Redis's position is whole microseconds."""
    position, job_id = decode_cursor(cursor)
    return int(position), job_id


class RedisInspection(RedisConnection):
    """What an operator (the CLI, the HTTP API, the dashboard) asks of the Redis backend."""

    async def get(self, job_id: str) -> JobRecord | None:
        found = await self._locate([job_id])
        if job_id not in found:
            return None
        queue, h = found[job_id]
        try:
            return from_hash(job_id, queue, h)
        except Undecodable as exc:
            _log.warning("%s", exc)
            return None

    async def list_jobs(self, flt: JobFilter) -> JobPage:
        limit = max(1, flt.limit)
        cursor = _position(flt.cursor) if flt.cursor else None
        before = to_us(flt.created_before) if flt.created_before is not None else None
        hi: str | int = "+inf" if cursor is None else cursor[0]
        if before is not None and cursor is None:
            hi = f"({before}"
        lo: str | int = "-inf" if flt.created_after is None else to_us(flt.created_after)
        queues = [flt.queue] if flt.queue is not None else await self.known_queues()
        found: list[tuple[int, str, JobRecord]] = []
        for queue in queues:
            found += await self._scan_created(queue, flt, hi, lo, limit + 1, cursor, before)
        found.sort(key=lambda t: (t[0], t[1]), reverse=True)
        page = found[:limit]
        nxt = encode_cursor(page[-1][0], page[-1][1]) if len(found) > limit else None
        return JobPage(jobs=[rec for _, _, rec in page], next_cursor=nxt)

    async def _scan_created(
        self,
        queue: str,
        flt: JobFilter,
        hi: str | int,
        lo: str | int,
        want: int,
        cursor: tuple[int, str] | None,
        before: int | None,
    ) -> list[tuple[int, str, JobRecord]]:
        """Up to ``want`` jobs of ``queue`` matching ``flt``, newest first, walking the
        creation index in chunks."""
        base, offset, chunk = self.base(queue), 0, min(max(want, 100), 1000)
        out: list[tuple[int, str, JobRecord]] = []

        async def window(client: aioredis.Redis, start: int) -> list[tuple[bytes, float]]:
            key = f"{base}:created"
            got: Any = await client.zrevrangebyscore(key, hi, lo, start, chunk, withscores=True)
            return [(raw, float(score)) for raw, score in got]

        async def fetch(client: aioredis.Redis, ids: list[bytes]) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for raw in ids:
                pipe.hgetall(f"{base}:j:{raw.decode()}")
            return list(await pipe.execute())

        while len(out) < want:
            entries = await self._run(functools.partial(window, start=offset))
            if not entries:
                break
            offset += len(entries)
            ids = [raw for raw, _ in entries]
            hashes = await self._run(functools.partial(fetch, ids=ids))
            for (raw, score), h in zip(entries, hashes, strict=True):
                created, job_id = int(score), raw.decode()
                if not h or (before is not None and created >= before):
                    continue
                if cursor is not None and (created, job_id) >= cursor:
                    continue
                try:
                    rec = from_hash(job_id, queue, h)
                except Undecodable as exc:
                    _log.warning("%s", exc)
                    continue
                if matches(rec, flt):
                    out.append((created, job_id, rec))
            if len(entries) < chunk:
                break
        return out[:want]

    async def limit_usage(self) -> list[LimitUsage]:
        queues = await self.known_queues()
        return await redis_limit_usage(self._run, {q: self.base(q) for q in queues})

    async def counts(self) -> dict[str, dict[JobState, int]]:
        queues = await self.known_queues()
        sets = [
            ("ready", JobState.QUEUED),
            ("sched", JobState.SCHEDULED),
            ("lease", JobState.RUNNING),
            ("succeeded", JobState.SUCCEEDED),
            ("dead", JobState.DEAD),
            ("cancelled", JobState.CANCELLED),
            ("own:succeeded", JobState.SUCCEEDED),  # finished jobs with their own retention
            ("own:dead", JobState.DEAD),
            ("own:cancelled", JobState.CANCELLED),
        ]

        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for q in queues:
                for name, _ in sets:
                    pipe.zcard(f"{self.base(q)}:{name}")
            return list(await pipe.execute())

        numbers = iter(await self._run(op))
        out: dict[str, dict[JobState, int]] = {}
        for q in queues:
            by_state = dict.fromkeys((state for _, state in sets), 0)
            for _, state in sets:
                by_state[state] += int(next(numbers))
            if any(by_state.values()):
                out[q] = {s: n for s, n in by_state.items() if n}
        return out

    async def _steer(self, name: str, job_id: str, argv: Sequence[Any]) -> JobRecord | None:
        where = await self._queues_of([job_id])
        if job_id not in where:
            return None
        queue = where[job_id]
        reply = (await self._per_queue(name, {queue: [job_id, *argv]}))[queue]
        if not reply:
            return None
        if reply[0] == b"invalid":
            state = reply[1].decode()
            if state == "key":
                msg = f"job {job_id} cannot be retried: another active job holds its key"
                raise InvalidState(msg)
            verb = "cancelled" if name == "cancel" else "retried"
            raise InvalidState(f"job {job_id} is {state}; it cannot be {verb}")
        return from_hash(job_id, queue, pairs(reply[1]))

    async def cancel(self, job_id: str) -> JobRecord | None:
        try:
            return await self._steer("cancel", job_id, [self._retention_arg, "cancelled"])
        except Undecodable as exc:
            _log.warning("%s", exc)
            return None

    async def requeue(self, job_id: str) -> JobRecord | None:
        try:
            return await self._steer("requeue", job_id, [])
        except Undecodable as exc:
            _log.warning("%s", exc)
            return None

    async def delete(self, job_ids: Sequence[str]) -> int:
        where = await self._queues_of(list(dict.fromkeys(job_ids)))
        calls: dict[str, list[str]] = {}
        for job_id, queue in where.items():
            calls.setdefault(queue, []).append(job_id)
        return sum(int(n) for n in (await self._per_queue("delete", calls)).values())

    async def purge(
        self, states: Sequence[JobState], *, older_than_s: float = 0.0, queue: str | None = None
    ) -> int:
        check_purge_states(states)
        queues = [queue] if queue is not None else await self.known_queues()
        age = max(older_than_s, 0.0)
        # Both halves of each state's finished index: without and with their own retention.
        ages = [(index, age) for s in dict.fromkeys(states) for index in (s, f"own:{s}")]
        return await self._purge_batches(queues, ages)

    async def _purge_batches(self, queues: Sequence[str], ages: Sequence[tuple[str, float]]) -> int:
        """Delete finished jobs older than each finished index's age (``purge.lua``) in
        ``queues``; return how many."""
        if not ages:
            return 0
        argv: list[Any] = [PRUNE_BATCH]
        for index, age_s in ages:
            argv += [index, repr(float(age_s))]
        return await self._batches("purge", {q: argv for q in queues})

    async def _prune_own(self, queues: Sequence[str]) -> int:
        """Delete the finished jobs past their own retention (``prune_own.lua``)."""
        return await self._batches("prune_own", {q: [PRUNE_BATCH] for q in queues})

    async def _batches(self, script: str, calls: Mapping[str, Sequence[Any]]) -> int:
        """Call a deleting ``script`` per queue, at most PRUNE_BATCH jobs per call, calling
        again for the queues whose batch came back full; return how many. Concurrent callers
        share the work: each job is deleted, and counted, once."""
        deleted, pending = 0, dict(calls)
        while pending:
            replies = await self._per_queue(script, pending)
            deleted += sum(int(n) for n in replies.values())
            pending = {q: calls[q] for q, n in replies.items() if int(n) >= PRUNE_BATCH}
        return deleted

    async def set_paused(self, queue: str, paused: bool) -> None:
        async def op(client: aioredis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.sadd(f"{self._global}:queues", queue)
            self._eval(pipe, "pause", [self.base(queue)], ["1" if paused else "0"])
            await pipe.execute()

        await self._run(op)

    async def paused_queues(self) -> set[str]:
        queues = await self.known_queues()

        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for q in queues:
                pipe.exists(f"{self.base(q)}:paused")
            return list(await pipe.execute())

        return {q for q, p in zip(queues, await self._run(op), strict=True) if p}

    async def report_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        argv = [info.id, msgspec.json.encode(info), max(to_us(ttl_s), 0)]
        await self._run(lambda c: self._eval(c, "worker_report", [self._global], argv))

    async def remove_worker(self, worker_id: str) -> None:
        await self._run(lambda c: self._eval(c, "worker_list", [self._global], [worker_id]))

    async def workers(self) -> list[WorkerInfo]:
        rows = await self._run(lambda c: self._eval(c, "worker_list", [self._global], []))
        out = []
        for _, report, seen in rows:
            try:
                info = WORKER.decode(report)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # untrusted storage: skip a report that does not decode
            out.append(msgspec.structs.replace(info, last_seen_at=from_us(seen)))
        return out
