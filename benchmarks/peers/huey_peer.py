"""Huey with ``RedisHuey`` (blocking pops, no polling delay): one consumer process with 8
worker threads (``-k thread -w 8``), results off. Huey has no bulk enqueue."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from huey import RedisHuey  # type: ignore[import-untyped]

from benchmarks.peers.protocol import Probe, RunConfig

# The consumer CLI imports this module and reads ``huey``: module-level by necessity.
CFG = RunConfig.from_env()
PROBE = Probe(CFG.stats_dir, CFG.record_latency)
THREADS = CFG.concurrency or 8

huey = RedisHuey(name=CFG.queue, url=CFG.redis_url, results=False)


@huey.task(name="noop")  # type: ignore[untyped-decorator]
def noop(i: int) -> None:
    PROBE.hit(i)


class HueyPeer:
    bulk = False
    config = f"RedisHuey (blocking), consumer -k thread -w {THREADS}, results off"

    async def setup(self) -> None:
        pass

    async def enqueue(self, arg: int) -> None:
        noop(arg)

    async def enqueue_bulk(self, args: Sequence[int]) -> None:
        raise NotImplementedError

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "huey.bin.huey_consumer", f"{__name__}.huey",
            "-k", "thread", "-w", str(THREADS), "--quiet", "--no-periodic",
        ]  # fmt: skip

    async def close(self) -> None:
        huey.storage.pool.disconnect()

    async def cleanup(self) -> None:
        pass  # the driver deletes every key this run created


def make_peer(cfg: RunConfig) -> HueyPeer:
    return HueyPeer()
