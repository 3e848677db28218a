"""The Redis backend's limits, beside ``lua/claim.lua`` (which makes the decision).

A job with limits keeps them in its hash field ``b``; ``enqueue.lua`` marks its queue
(``<base>:limited``) in the same script, so no claim can take it by the ungated path. The mark
is never removed: a queue that once had limited jobs keeps the gated claim (a walk of its
ready set, one field read per job), which is cheap while few jobs wait ahead of a free one.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from offload.backends.limits import usage
from offload.backends.redis.codec import split_limits
from offload.job import LimitUsage

Run = Callable[[Callable[[aioredis.Redis], Awaitable[Any]]], Awaitable[Any]]


class RedisLimits:
    """One backend instance's side of limits: what its last claims held back (per queue, for
    ``wait_for_work``), and the limited jobs it holds (their completion wakes the queue's
    waiters, in every process)."""

    def __init__(self) -> None:
        self.held: dict[str, float] = {}  # queue -> loop time a rate lets a job go (inf: never)
        self.claimed: dict[str, str] = {}  # job id -> base, limited jobs this instance holds

    def after_claim(self, queues: Sequence[str], held: bytes, loop_now: float) -> None:
        """Note what the claim held: b'' nothing, b'inf' until a completion, else µs."""
        if not held:
            for q in queues:
                self.held.pop(q, None)
            return
        at = math.inf if held == b"inf" else loop_now + int(held) / 1e6
        for q in queues:
            self.held[q] = at

    async def wake_freed(self, run: Run, job_ids: Sequence[str]) -> None:
        """After a completion: wake the waiters of the queues whose limited jobs finished."""
        bases = {self.claimed.pop(i) for i in job_ids if i in self.claimed}
        if not bases:
            return

        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for base in bases:
                pipe.rpush(f"{base}:wake", "1")
            return list(await pipe.execute())

        await run(op)


async def limit_usage(run: Run, bases: dict[str, str]) -> list[LimitUsage]:
    """``Backend.limit_usage`` over the marked queues among ``bases`` (queue -> base)."""

    async def marked(client: aioredis.Redis) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for base in bases.values():
            pipe.exists(f"{base}:limited")
        return list(await pipe.execute())

    flags = await run(marked)
    rows: list[tuple[str, bool, Sequence[str]]] = []
    for (queue, base), flag in zip(bases.items(), flags, strict=True):
        if flag:
            rows += await _queue_usage(run, queue, base)
    return usage(rows)


async def _queue_usage(run: Run, queue: str, base: str) -> list[tuple[str, bool, Sequence[str]]]:
    async def members(client: aioredis.Redis) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        pipe.zrange(f"{base}:ready", 0, -1)
        pipe.zrange(f"{base}:sched", 0, -1)
        pipe.zrange(f"{base}:lease", 0, -1)
        return list(await pipe.execute())

    ready, sched, lease = await run(members)
    ids = [(m[13:].decode(), False) for m in (*ready, *sched)] + [(i.decode(), True) for i in lease]

    async def blobs(client: aioredis.Redis) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for job_id, _ in ids:
            pipe.hget(f"{base}:j:{job_id}", "b")
        return list(await pipe.execute())

    out: list[tuple[str, bool, Sequence[str]]] = []
    for (_, running), blob in zip(ids, await run(blobs) if ids else [], strict=True):
        limits = split_limits(blob)
        if limits:
            out.append((queue, running, limits))
    return out
