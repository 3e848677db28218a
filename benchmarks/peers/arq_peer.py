"""arq on Redis: one worker process running up to ``max_jobs`` jobs at once on its event loop,
polling its queue every ``poll_delay`` (lowered from the default 0.5 s, which would dominate
the latency figures). arq has no bulk enqueue."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

from benchmarks.peers.protocol import Probe, RunConfig

# The arq CLI imports this module and reads ``WorkerSettings``: module-level by necessity.
CFG = RunConfig.from_env()
PROBE = Probe(CFG.stats_dir, CFG.record_latency)
MAX_JOBS = CFG.concurrency or 100
POLL_DELAY_S = 0.05
REDIS = RedisSettings.from_dsn(CFG.redis_url)


async def noop(ctx: dict[str, Any], i: int) -> None:
    PROBE.hit(i)


class WorkerSettings:
    functions = [noop]
    redis_settings = REDIS
    queue_name = CFG.queue
    max_jobs = MAX_JOBS
    poll_delay = POLL_DELAY_S


class ArqPeer:
    bulk = False
    config = f"max_jobs {MAX_JOBS}, poll_delay {POLL_DELAY_S} s, results kept (default)"

    def __init__(self) -> None:
        self.pool: ArqRedis | None = None

    async def setup(self) -> None:
        self.pool = await create_pool(REDIS, default_queue_name=CFG.queue)

    async def enqueue(self, arg: int) -> None:
        assert self.pool is not None
        await self.pool.enqueue_job("noop", arg)

    async def enqueue_bulk(self, args: Sequence[int]) -> None:
        raise NotImplementedError

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "arq", f"{__name__}.WorkerSettings"]

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()

    async def cleanup(self) -> None:
        pass  # the driver deletes every key this run created


def make_peer(cfg: RunConfig) -> ArqPeer:
    return ArqPeer()
