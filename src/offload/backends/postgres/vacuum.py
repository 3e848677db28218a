"""Vacuuming the jobs table from the backend, as work passes through it (docs/postgres.md,
*At depth*).

Why the backend does it and not only autovacuum: a claim leaves its job's entry in the claim
index (the row no longer matches the index, but the entry stays until a VACUUM removes it),
and every later claim walks over those entries before it reaches a waiting job. Draining a
deep queue at 10,000 jobs/s leaves 600,000 such entries per minute, and autovacuum looks at a
database at most once per ``autovacuum_naptime`` (a server setting, one minute by default;
migration 8's per-table settings make it vacuum the jobs table every time it looks, but cannot
make it look sooner). So after every ``vacuum_every`` row versions this process made dead
(two per claimed job: the claim and its completion; one per deleted job), it starts one
``VACUUM (SKIP_LOCKED)`` of the jobs table in the background, on a connection of its own:
VACUUM takes no lock that stops claims, enqueues or completions, and one that finds another
VACUUM (autovacuum's or another worker's) at work skips at once. ``vacuum_every=0`` leaves it
all to autovacuum.

A role that does not own the table gets a warning from PostgreSQL and no vacuum; nothing
fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from offload.backends.postgres.queries import Options

log = logging.getLogger("offload.postgres")


class Vacuum:
    """Counts dead row versions and keeps at most one background VACUUM running."""

    def __init__(self, opts: Options) -> None:
        self._opts = opts
        self._every = opts.vacuum_every
        self._dead = 0
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # vacuums started (tests, benchmarks)

    def note(self, dead: int) -> None:
        """``dead`` more row versions became dead; start a VACUUM once enough have."""
        if self._every <= 0 or dead <= 0:
            return
        self._dead += dead
        if self._dead >= self._every and (self._task is None or self._task.done()):
            self._dead = 0
            self.runs += 1
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        """One VACUUM of the jobs table, now; errors are logged, never raised."""
        sql = f'VACUUM (SKIP_LOCKED) "{self._opts.schema}".jobs'
        try:
            async with await psycopg.AsyncConnection.connect(
                self._opts.conninfo,
                autocommit=True,
                connect_timeout=max(1, round(self._opts.timeout_s)),
            ) as conn:
                await conn.execute(sql.encode())
        except (psycopg.Error, OSError) as exc:
            log.warning("VACUUM of %s.jobs failed: %s", self._opts.schema, exc)

    async def settled(self) -> None:
        """Return once no VACUUM started by :meth:`note` is running (tests, benchmarks)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        """Stop a VACUUM still running (the server finishes or cancels it on its own)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
