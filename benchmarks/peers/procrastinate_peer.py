"""procrastinate on PostgreSQL, in a database created for the run and dropped after it: one
worker process with ``--concurrency`` jobs at once, woken by LISTEN/NOTIFY (its default);
``batch_defer_async`` is the bulk call. Finished jobs are kept (its default)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import procrastinate
from procrastinate.types import JSONDict

from benchmarks.peers import cleanup
from benchmarks.peers.protocol import Probe, RunConfig

# The procrastinate CLI imports this module and reads ``app``: module-level by necessity.
CFG = RunConfig.from_env()
PROBE = Probe(CFG.stats_dir, CFG.record_latency)
CONCURRENCY = CFG.concurrency or 10
DATABASE = CFG.queue
DATABASE_URL = CFG.postgres_url.rsplit("/", 1)[0] + "/" + DATABASE

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DATABASE_URL))


@app.task(name="noop", queue=CFG.queue)
async def noop(i: int) -> None:
    PROBE.hit(i)


class ProcrastinatePeer:
    bulk = True
    config = f"PsycopgConnector, --concurrency {CONCURRENCY}, LISTEN/NOTIFY, batch_defer_async"

    def __init__(self) -> None:
        self.opened = False

    async def setup(self) -> None:
        cleanup.create_database(CFG.postgres_url, DATABASE)
        await app.open_async()
        self.opened = True
        await app.schema_manager.apply_schema_async()

    async def enqueue(self, arg: int) -> None:
        await noop.defer_async(i=arg)

    async def enqueue_bulk(self, args: Sequence[int]) -> None:
        kwargs: list[JSONDict] = [{"i": a} for a in args]
        await noop.batch_defer_async(*kwargs)

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "procrastinate", "--app", f"{__name__}.app", "worker",
            "--queues", CFG.queue, "--concurrency", str(CONCURRENCY),
        ]  # fmt: skip

    async def close(self) -> None:
        if self.opened:
            await app.close_async()

    async def cleanup(self) -> None:
        cleanup.drop_database(CFG.postgres_url, DATABASE)


def make_peer(cfg: RunConfig) -> ProcrastinatePeer:
    return ProcrastinatePeer()
