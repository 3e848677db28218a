"""Running offload's worker from a framework's own command line (``manage.py
offload_worker``, ``flask offload worker``): the same loop, signals and drain as
``offload worker``, with the framework's app set up first."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from offload.app import App
from offload.cli.processes import run_worker
from offload.worker import WorkerConfig


def worker_config(
    queues: str | Sequence[str],
    *,
    concurrency: int = 10,
    grace: float = 25.0,
    lease: float = 30.0,
    recover: float = 5.0,
    burst: bool = False,
) -> WorkerConfig:
    names = queues.split(",") if isinstance(queues, str) else list(queues)
    return WorkerConfig(
        queues=tuple(q.strip() for q in names if q.strip()),
        concurrency=concurrency,
        lease_s=lease,
        heartbeat_s=lease / 3,
        grace_s=grace,
        recover_s=recover,
        burst=burst,
    )


def run(app: App, config: WorkerConfig) -> None:
    """Run one worker process until SIGTERM/SIGINT (or, with ``burst``, until idle)."""
    asyncio.run(run_worker(app, config))
