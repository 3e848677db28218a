"""offload on each of its backends: ``offload-sqlite``, ``offload-redis``,
``offload-postgres``, ``offload-rabbitmq`` (RabbitMQ delivery, state in Redis) and
``offload-storeless-rabbitmq`` (RabbitMQ alone: the job in its message, no state store, as
Celery runs without a result backend), ``offload-beanstalkd`` (Beanstalkd delivery, state in
Redis, as the RabbitMQ form) and ``offload-storeless-beanstalkd`` (Beanstalkd alone).

One ``offload worker`` process with ``--concurrency`` slots; the task is ``async`` (runs on
the worker's event loop, like the arq/SAQ/taskiq/procrastinate tasks); ``aenqueue`` one by one
and ``aenqueue_many`` in bulk. Every backend keeps finished jobs' records (its default).

``offload-sync-<backend>`` is the same with what the sync peers (Celery, Dramatiq, RQ, Huey)
measure: a sync task (run in the worker's threads) and ``task.enqueue()`` from sync code, one
by one, as a Django or Flask view calls it; ``offload-sync-normal-sqlite`` is SQLite with
``synchronous=normal`` (durable against a process crash, not against power loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import offload
from benchmarks.peers import cleanup
from benchmarks.peers.protocol import Probe, RunConfig

# `offload worker module:app` imports this module and reads ``app``: module-level by necessity.
CFG = RunConfig.from_env()
PROBE = Probe(CFG.stats_dir, CFG.record_latency)
CONCURRENCY = CFG.concurrency or 100
KIND = CFG.system.removeprefix("offload-")
SYNC = KIND.startswith("sync-")  # a sync task, enqueued with task.enqueue() from sync code
KIND = KIND.removeprefix("sync-")
NORMAL = KIND.startswith("normal-")  # SQLite with synchronous=normal
KIND = KIND.removeprefix("normal-")
SQLITE_PATH = Path(tempfile.gettempdir()) / f"offload-{CFG.queue}.db"
REDIS_URL = f"{CFG.redis_url}?prefix={CFG.queue}"
# the beanstalkd to measure on (a binlog fsynced at every write, or every 200 ms, or none)
BEANSTALKD_URL = os.environ.get("BENCH_BEANSTALKD_URL", "beanstalk://127.0.0.1:11300/")


def backend_url() -> str:
    if KIND == "sqlite":
        return f"sqlite:///{SQLITE_PATH}" + ("?synchronous=normal" if NORMAL else "")
    if KIND == "redis":
        return REDIS_URL
    if KIND == "postgres":
        return f"{CFG.postgres_url}?schema={CFG.queue}&auto_migrate=1"
    if KIND == "rabbitmq":
        return f"{CFG.amqp_url}?store={quote(REDIS_URL, safe='')}&prefix={CFG.queue}"
    if KIND == "storeless-rabbitmq":
        return f"{CFG.amqp_url}?prefix={CFG.queue}"
    if KIND == "beanstalkd":
        return f"{BEANSTALKD_URL}?store={quote(REDIS_URL, safe='')}&prefix={CFG.queue}"
    if KIND == "storeless-beanstalkd":
        return f"{BEANSTALKD_URL}?prefix={CFG.queue}"
    raise SystemExit(f"unknown offload backend {KIND!r}")


URL = backend_url()
app = offload.App(URL)


if SYNC:

    @app.task(name="noop")
    def noop(i: int) -> None:
        PROBE.hit(i)

else:

    @app.task(name="noop")
    async def anoop(i: int) -> None:
        PROBE.hit(i)


BOUND = app.get_task("noop").options(queue=CFG.queue)
SYNCHRONOUS = ", synchronous=normal" if NORMAL else ""


class OffloadPeer:
    bulk = True
    config = f"{KIND} backend{SYNCHRONOUS}, 1 process --concurrency {CONCURRENCY}, " + (
        "sync task, task.enqueue() from sync code" if SYNC else "async task, aenqueue"
    )

    async def setup(self) -> None:
        if SYNC:  # opened off this loop, as a sync view finds it (on the app's bridge thread)
            await asyncio.to_thread(app.run_sync, _opened)
        else:
            await app.open()

    async def enqueue(self, arg: int) -> None:
        if SYNC:
            BOUND.enqueue(arg)  # blocks this loop, as the sync peers' calls do
        else:
            await BOUND.aenqueue(arg)

    async def enqueue_bulk(self, args: Sequence[int]) -> None:
        await app.aenqueue_many([BOUND.prepare(a) for a in args])

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "offload", "--url", URL, "worker", f"{__name__}:app",
            "--queues", CFG.queue, "--concurrency", str(CONCURRENCY), "--log-level", "warning",
        ]  # fmt: skip

    async def close(self) -> None:
        await app.call(_drop_broker_objects)  # on the loop the backend lives on
        await app.close()

    async def cleanup(self) -> None:
        if KIND == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{SQLITE_PATH}{suffix}")
        elif KIND == "postgres":
            cleanup.drop_schema(CFG.postgres_url, CFG.queue)
        # redis keys (and the rabbitmq run's store) are deleted by the driver


async def _drop_broker_objects(backend: Any) -> None:
    if KIND.endswith("rabbitmq"):
        queues = {*backend.declared_queues(), f"{CFG.queue}.q.{CFG.queue}"}
        await backend.delete_broker_objects(sorted(queues))
    if KIND.endswith("beanstalkd"):
        from offload.backends.beanstalkd.options import CARRIED, STORED, tube_of

        form = CARRIED if KIND.startswith("storeless") else STORED
        await backend.delete_tubes([tube_of(CFG.queue, CFG.queue, form)])


async def _opened(backend: object) -> None:
    """Nothing: ``app.run_sync`` opens the backend before it runs this."""


def make_peer(cfg: RunConfig) -> OffloadPeer:
    return OffloadPeer()
