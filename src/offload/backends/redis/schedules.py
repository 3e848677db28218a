"""Schedule records of the Redis backend (see ``Backend.advance_schedule``).

Three keys under the prefix's own hash tag (one Cluster slot): ``sched:t`` (name -> last tick,
in microseconds; '' for a record made by a pause), ``sched:j`` (name -> last job id) and
``sched:p`` (the set of paused names). ``schedule.lua`` raises a tick atomically.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from offload.backends.redis.codec import from_us, to_us
from offload.backends.redis.connection import RedisConnection
from offload.schedules import ScheduleRecord


class RedisSchedules(RedisConnection):
    def _sched(self, part: str) -> str:
        return f"{self._global}:sched:{part}"

    async def schedule_records(self) -> dict[str, ScheduleRecord]:
        async def op(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(self._sched("t"))
            pipe.hgetall(self._sched("j"))
            pipe.smembers(self._sched("p"))
            return list(await pipe.execute())

        ticks, jobs, paused = await self._run(op)
        names = {_text(n) for n in ticks} | {_text(n) for n in paused}
        ticks = {_text(k): v for k, v in ticks.items()}
        jobs = {_text(k): _text(v) for k, v in jobs.items()}
        paused = {_text(n) for n in paused}
        return {
            n: ScheduleRecord(
                name=n,
                last_tick=from_us(ticks[n]) if ticks.get(n) else None,
                last_job_id=jobs.get(n),
                paused=n in paused,
            )
            for n in sorted(names)
        }

    async def advance_schedule(self, name: str, tick: float, job_id: str | None) -> None:
        keys = [self._sched("t"), self._sched("j")]
        argv = [name, to_us(tick), job_id or ""]
        await self._run(lambda c: self._eval(c, "schedule", keys, argv))

    async def set_schedule_paused(self, name: str, paused: bool) -> None:
        async def op(client: aioredis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.hsetnx(self._sched("t"), name, "")
            if paused:
                pipe.sadd(self._sched("p"), name)
            else:
                pipe.srem(self._sched("p"), name)
            await pipe.execute()

        await self._run(op)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
