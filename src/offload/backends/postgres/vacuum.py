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

A VACUUM gives an index's emptied pages back to the index, not to the file system: after a
million jobs have passed and been pruned, the table is back to nothing and its indexes still
hold 460 MB. So after each VACUUM it runs, the backend rebuilds (``REINDEX INDEX
CONCURRENTLY``, which takes no lock that stops claims, enqueues or completions) each index
larger than ``reindex_mb`` and than :data:`BYTES_PER_ROW` times the table's rows: an index far
larger than its rows need, which happens only once a backlog is gone. An interrupted rebuild
leaves an invalid ``<index>_ccnew`` copy; the next pass drops it first. A rebuild that gave up
(it waits for every older transaction in the database, :data:`REINDEX_LOCK_TIMEOUT`) is not
tried again by that process for :data:`REBUILD_BACKOFF_S`. Oban's Reindexer plugin rebuilds
its indexes on a schedule for the same reason. ``reindex_mb=0`` turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

import psycopg
from psycopg import sql

from offload.backends.postgres.queries import Options

log = logging.getLogger("offload.postgres")

# An index entry of ours takes 30 to 60 bytes; an index above this many bytes per row of the
# table is mostly empty pages.
BYTES_PER_ROW = 256
# How long a rebuild waits for a lock (another's VACUUM of the table, an older transaction
# anywhere in the database) before it gives up.
REINDEX_LOCK_TIMEOUT = "10s"
# After a rebuild gave up, the next try waits this long (other processes keep their own).
REBUILD_BACKOFF_S = 3600.0
# What an interrupted REINDEX CONCURRENTLY leaves: an invalid copy named <index>_ccnew (before
# the swap) or <index>_ccold (after), with a digit when the name was taken.
_LEFTOVER = re.compile(r"_cc(new|old)\d*$")


class Vacuum:
    """Counts dead row versions and keeps at most one background VACUUM running."""

    def __init__(self, opts: Options, queries: dict[str, str], ns: int) -> None:
        self._opts = opts
        self._q = queries
        self._ns = ns
        self._every = opts.vacuum_every
        self._dead = 0
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # vacuums started (tests, benchmarks)
        self.rebuilt: list[str] = []  # indexes rebuilt (tests, benchmarks)
        self._rebuild_after = 0.0  # monotonic time before which no rebuild is tried

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
        """One VACUUM of the jobs table, now, then the rebuild of any index far larger than
        the table's rows need; errors are logged, never raised."""
        vacuum = f'VACUUM (SKIP_LOCKED) "{self._opts.schema}".jobs'
        try:
            async with await psycopg.AsyncConnection.connect(
                self._opts.conninfo,
                autocommit=True,
                connect_timeout=max(1, round(self._opts.timeout_s)),
            ) as conn:
                await conn.execute(vacuum.encode())
                if self._opts.reindex_mb > 0:
                    await self._rebuild_bloated(conn)
        except (psycopg.Error, OSError) as exc:
            log.warning("VACUUM or REINDEX of %s.jobs failed: %s", self._opts.schema, exc)

    async def _rebuild_bloated(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Drop leftovers of interrupted rebuilds, then rebuild each bloated index; one
        process at a time per schema (an advisory lock), the others skip."""
        if time.monotonic() < self._rebuild_after:
            return
        cur = await conn.execute(self._q["try_reindex_lock"], {"ns": self._ns})
        row = await cur.fetchone()
        if row is None or not row[0]:
            return
        try:
            await conn.execute(f"SET lock_timeout = '{REINDEX_LOCK_TIMEOUT}'".encode())
            leftovers, bloated = await self._pick(conn)
            for name in leftovers:
                index = sql.Identifier(self._opts.schema, name)
                await conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(index))
                log.info("dropped %s.%s, left by an interrupted rebuild", self._opts.schema, name)
            for name, size in bloated:
                index = sql.Identifier(self._opts.schema, name)
                await conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(index))
                self.rebuilt.append(name)
                log.info("rebuilt index %s.%s (was %d bytes)", self._opts.schema, name, size)
        except psycopg.Error:
            # A rebuild waits for every older snapshot in the database; one that gave up
            # (a long transaction somewhere) would give up again at once: not for a while.
            self._rebuild_after = time.monotonic() + REBUILD_BACKOFF_S
            raise
        finally:
            with contextlib.suppress(psycopg.Error):  # the connection may be the failure
                await conn.execute(b"RESET lock_timeout")
                await conn.execute(self._q["reindex_unlock"], {"ns": self._ns})

    async def _pick(
        self, conn: psycopg.AsyncConnection[Any]
    ) -> tuple[list[str], list[tuple[str, int]]]:
        """The leftovers of interrupted rebuilds to drop, and the bloated indexes (name, bytes)."""
        rows = await (await conn.execute(self._q["jobs_indexes"])).fetchall()
        floor = self._opts.reindex_mb * 1024 * 1024
        leftovers: list[str] = []
        bloated: list[tuple[str, int]] = []
        if rows and float(rows[0][3]) < 0:  # never vacuumed nor analysed: rows unknown
            return [], []
        for name, size, valid, reltuples in rows:
            if not valid and _LEFTOVER.search(str(name)):
                leftovers.append(str(name))
            elif valid and int(size) > max(floor, BYTES_PER_ROW * float(reltuples)):
                bloated.append((str(name), int(size)))
        return leftovers, bloated

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
