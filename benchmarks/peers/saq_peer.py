"""SAQ on Redis: one worker process (``--workers 1``) running up to ``concurrency`` jobs at
once on its event loop. SAQ has no bulk enqueue (``map`` also waits for the results)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from saq import Queue

from benchmarks.peers.protocol import Probe, RunConfig

# The SAQ CLI imports this module and reads ``settings``: module-level by necessity.
CFG = RunConfig.from_env()
PROBE = Probe(CFG.stats_dir, CFG.record_latency)
CONCURRENCY = CFG.concurrency or 50

queue = Queue.from_url(CFG.redis_url, name=CFG.queue)


async def noop(ctx: Any, *, i: int) -> None:
    PROBE.hit(i)


settings = {"queue": queue, "functions": [noop], "concurrency": CONCURRENCY}


class SaqPeer:
    bulk = False
    config = f"--workers 1, concurrency {CONCURRENCY}"

    async def setup(self) -> None:
        await queue.connect()

    async def enqueue(self, arg: int) -> None:
        await queue.enqueue("noop", i=arg)

    async def enqueue_bulk(self, args: Sequence[int]) -> None:
        raise NotImplementedError

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "saq", f"{__name__}.settings", "--workers", "1", "--quiet"]

    async def close(self) -> None:
        await queue.disconnect()

    async def cleanup(self) -> None:
        pass  # the driver deletes every key this run created


def make_peer(cfg: RunConfig) -> SaqPeer:
    return SaqPeer()
