"""Deleting finished jobs in bounded batches, and giving the space back to the file system.

Each batch is one request to the writer thread (so one short transaction, and enqueues and
claims queued behind it wait a few milliseconds at most), repeated until a batch comes back
short. The file has ``auto_vacuum=INCREMENTAL`` (set on a new file before its tables exist,
converted once by a ``VACUUM`` on an older one: see :mod:`offload.backends.sqlite.connection`),
so pages freed by deletes go back to the file system in steps of :data:`VACUUM_STEP_PAGES`
instead of staying in the file for ever; without it a file that once held a backlog keeps its
largest size. In WAL mode the file itself only shrinks when a checkpoint copies the whole WAL
back, and SQLite checkpoints on its own only after the next 1,000 pages written: so a pass
that freed pages ends with a checkpoint of its own (a million jobs drained and pruned left the
file at 231 MB without it, 0.1 MB with it).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from offload.backends.retention import PRUNE_BATCH, Retention
from offload.backends.sqlite.queries import Q
from offload.job import JobState

log = logging.getLogger("offload.sqlite")

Write = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]

VACUUM_STEP_PAGES = 256  # 1 MiB of 4 KiB pages per step: a few ms of writer time
VACUUM_MAX_STEPS = 256  # per maintenance run; the rest is given back at the next one


async def purge_state(write: Write, state: JobState, cutoff: float, queue: str | None) -> int:
    """Delete the jobs in ``state`` finished at or before ``cutoff`` (of ``queue`` when
    given), one batch per writer request; return how many."""
    params = {"state": state.value, "cutoff": cutoff, "queue": queue}
    return await _batches(write, "purge_batch", params)


async def prune(write: Write, policy: Retention, now: Callable[[], float]) -> int:
    """Delete the finished jobs past their retention: their own (their task's) where they have
    one for their state, else ``policy``'s; return how many."""
    deleted = await _batches(write, "prune_own_batch", {"now": now()})
    for state, age_s in policy.pruned():
        params = {"state": state.value, "cutoff": now() - age_s}
        deleted += await _batches(write, "prune_batch", params)
    return deleted


async def _batches(write: Write, query: str, params: dict[str, Any]) -> int:
    """Run the DELETE ``query`` one batch per writer request until a batch comes back short."""
    sql, args = Q[query], {**params, "batch": PRUNE_BATCH}
    deleted = 0
    while True:
        n: int = await write(lambda conn: int(conn.execute(sql, args).rowcount))
        deleted += n
        if n < PRUNE_BATCH:
            return deleted


async def reclaim_space(write: Write, path: str) -> int:
    """Give free pages back to the file system in bounded steps; return how many pages."""

    def vacuum_step(conn: sqlite3.Connection) -> int:
        before = int(conn.execute(Q["free_pages"]).fetchone()[0])
        # The pragma frees one page per step of its statement, and Python's sqlite3 steps a
        # statement that returns no columns once: so one execute per page (microseconds each).
        for _ in range(min(before, VACUUM_STEP_PAGES)):
            conn.execute(Q["incremental_vacuum"])
        return before - int(conn.execute(Q["free_pages"]).fetchone()[0])

    freed = 0
    for _ in range(VACUUM_MAX_STEPS):
        n: int = await write(vacuum_step)
        freed += n
        if n < VACUUM_STEP_PAGES:
            break
    if freed:
        await asyncio.to_thread(checkpoint, path)
    return freed


def checkpoint(path: str) -> None:
    """Copy the WAL back into the file and truncate both, if no reader is in the way (best
    effort: a checkpoint cannot run inside the writer's transactions, so it takes a short
    connection of its own, which never waits)."""
    try:
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        conn.execute(Q["checkpoint_truncate"]).fetchone()
    except sqlite3.Error as exc:
        log.warning("checkpoint of %s failed: %s", path, exc)
    finally:
        conn.close()
