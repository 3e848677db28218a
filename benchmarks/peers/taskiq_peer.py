"""taskiq with taskiq-redis's ``ListQueueBroker`` (a Redis list, blocking pops): one worker
process (``--workers 1``; the CLI keeps a supervising parent) running up to
``--max-async-tasks`` jobs at once. taskiq has no bulk enqueue."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from taskiq_redis import ListQueueBroker

from benchmarks.peers.protocol import Probe, RunConfig

# The taskiq CLI imports this module and reads ``broker``: module-level by necessity.
CFG = RunConfig.from_env()
PROBE = Probe(CFG.stats_dir, CFG.record_latency)
MAX_ASYNC = CFG.concurrency or 100

broker = ListQueueBroker(CFG.redis_url, queue_name=CFG.queue)


@broker.task(task_name="noop")
async def noop(i: int) -> None:
    PROBE.hit(i)


class TaskiqPeer:
    bulk = False
    config = f"ListQueueBroker, --workers 1 --max-async-tasks {MAX_ASYNC}, no result backend"

    async def setup(self) -> None:
        await broker.startup()

    async def enqueue(self, arg: int) -> None:
        await noop.kiq(arg)

    async def enqueue_bulk(self, args: Sequence[int]) -> None:
        raise NotImplementedError

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "taskiq", "worker", f"{__name__}:broker",
            "--workers", "1", "--max-async-tasks", str(MAX_ASYNC), "--log-level", "WARNING",
        ]  # fmt: skip

    async def close(self) -> None:
        await broker.shutdown()

    async def cleanup(self) -> None:
        pass  # the driver deletes every key this run created


def make_peer(cfg: RunConfig) -> TaskiqPeer:
    return TaskiqPeer()
