"""Dramatiq with its Redis broker, as its documentation runs it: one worker process
(``--processes 1``; the CLI keeps a supervising parent) with 8 threads and the default
middleware. Dramatiq has no bulk enqueue. Keys live under a run-private namespace."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.peers.protocol import Probe, RunConfig

# The Dramatiq CLI imports this module and reads ``broker``: module-level by necessity.
CFG = RunConfig.from_env()
PROBE = Probe(CFG.stats_dir, CFG.record_latency)
THREADS = CFG.concurrency or 8

broker = RedisBroker(url=CFG.redis_url, namespace=f"dramatiq_{CFG.queue}")  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", queue_name=CFG.queue, max_retries=0)
def noop(i: int) -> None:
    PROBE.hit(i)


class DramatiqPeer:
    bulk = False
    config = f"Redis broker, --processes 1 --threads {THREADS}, default middleware"

    async def setup(self) -> None:
        pass

    async def enqueue(self, arg: int) -> None:
        noop.send(arg)

    async def enqueue_bulk(self, args: Sequence[int]) -> None:
        raise NotImplementedError

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "dramatiq", f"{__name__}:broker",
            "--processes", "1", "--threads", str(THREADS), "--queues", CFG.queue,
        ]  # fmt: skip

    async def close(self) -> None:
        broker.close()

    async def cleanup(self) -> None:
        pass  # the driver deletes every key this run created


def make_peer(cfg: RunConfig) -> DramatiqPeer:
    return DramatiqPeer()
