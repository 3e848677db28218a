"""Celery on Redis (``celery-redis``) or on RabbitMQ (``celery-rabbitmq``).

Configured as Celery's documentation advises for many short tasks: no result backend
(``task_ignore_result``), early acknowledgement (``acks_late`` off, the default), a high
prefetch multiplier, gossip/mingle/heartbeat off. The pool is ``threads`` with 8 threads in
one process (prefork would put an IPC hop on every job; the no-op needs no CPU).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from celery import Celery  # type: ignore[import-untyped]

from benchmarks.peers.protocol import Probe, RunConfig

# The Celery worker CLI imports this module and reads ``app``: module-level by necessity.
CFG = RunConfig.from_env()
PROBE = Probe(CFG.stats_dir, CFG.record_latency)
RABBITMQ = CFG.system.endswith("rabbitmq")
THREADS = CFG.concurrency or 8
PREFETCH_MULTIPLIER = 32

app = Celery("bench", broker=CFG.amqp_url if RABBITMQ else CFG.redis_url)
app.conf.update(
    task_default_queue=CFG.queue,
    task_ignore_result=True,
    task_acks_late=False,
    worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
    worker_enable_remote_control=False,  # no pidbox exchange/keys shared with other users
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")  # type: ignore[untyped-decorator]
def noop(i: int) -> None:
    PROBE.hit(i)


class CeleryPeer:
    bulk = False  # group() publishes one message per job: no bulk call
    config = (
        f"{'RabbitMQ' if RABBITMQ else 'Redis'} broker, -P threads -c {THREADS}, "
        f"prefetch multiplier {PREFETCH_MULTIPLIER}, acks_late off, ignore_result, "
        "without gossip/mingle/heartbeat"
    )

    async def setup(self) -> None:
        pass

    async def enqueue(self, arg: int) -> None:
        noop.apply_async((arg,))

    async def enqueue_bulk(self, args: Sequence[int]) -> None:
        raise NotImplementedError

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", __name__, "worker",
            "-P", "threads", "-c", str(THREADS), "-Q", CFG.queue, "-l", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip

    async def close(self) -> None:
        app.close()

    async def cleanup(self) -> None:
        if RABBITMQ:
            with app.connection() as conn:
                channel = conn.default_channel
                channel.queue_delete(CFG.queue)
                channel.exchange_delete(CFG.queue)


def make_peer(cfg: RunConfig) -> CeleryPeer:
    return CeleryPeer()
