"""RQ on Redis with its non-forking worker (``SimpleWorker``), which runs jobs one at a time
in the worker process; ``enqueue_many`` (one pipeline) is the bulk call. Results are not kept
(``result_ttl=0``) and the worker logs at WARNING, as RQ advises for throughput."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from redis import Redis
from rq import Queue

from benchmarks.peers.protocol import Probe, RunConfig

CFG = RunConfig.from_env()
PROBE = Probe(CFG.stats_dir, CFG.record_latency)


def noop(i: int) -> None:
    PROBE.hit(i)


class RQPeer:
    bulk = True
    config = "SimpleWorker (one job at a time, no fork), result_ttl=0, enqueue_many for bulk"

    def __init__(self) -> None:
        self.redis = Redis.from_url(CFG.redis_url)
        self.queue = Queue(CFG.queue, connection=self.redis)

    async def setup(self) -> None:
        pass

    async def enqueue(self, arg: int) -> None:
        self.queue.enqueue(noop, arg, result_ttl=0)

    async def enqueue_bulk(self, args: Sequence[int]) -> None:
        jobs = [Queue.prepare_data(noop, (a,), result_ttl=0) for a in args]
        self.queue.enqueue_many(jobs)

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "rq.cli", "worker", "--worker-class", "rq.SimpleWorker",
            "--url", CFG.redis_url, "--logging_level", "WARNING", CFG.queue,
        ]  # fmt: skip

    async def close(self) -> None:
        self.redis.close()

    async def cleanup(self) -> None:
        pass  # the driver deletes every key this run created


def make_peer(cfg: RunConfig) -> RQPeer:
    return RQPeer()
