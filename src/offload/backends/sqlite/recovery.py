"""Recovery of expired leases on SQLite: the engine finds the jobs and writes the fate that
``offload.backends.common.expired_lease`` decided for each, fenced on the lease it found.

Both halves run on the writer thread in one transaction, on its clock (``time.time()``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from offload.backends.common import ExpiredJob, decide_expired, encoded_error
from offload.backends.sqlite.queries import Q


def find_expired(conn: sqlite3.Connection, now: float, limit: int) -> list[ExpiredJob]:
    """Up to ``limit`` running jobs whose lease expired by ``now``, each with its fate."""
    rows = conn.execute(Q["expired_leases"], {"now": now, "limit": limit}).fetchall()
    return decide_expired(rows, now)


def write_expired(conn: sqlite3.Connection, decided: Sequence[ExpiredJob], now: float) -> int:
    """Apply the decisions; return how many jobs they changed. A job no longer ``running``
    with the found attempt and worker, or whose lease is no longer expired at ``now``, is left
    alone (fenced)."""
    params = [
        {
            "id": job.id,
            "attempt": job.attempt,
            "worker_id": job.worker_id,
            "state": job.fate.state.value,
            "error": job.fate.error.error,
            "entry": encoded_error(job.fate.error),
            "now": now,
        }
        for job in decided
    ]
    if not params:
        return 0
    return int(conn.executemany(Q["write_expired_lease"], params).rowcount)


def recover_tx(conn: sqlite3.Connection, limit: int) -> tuple[int, bool]:
    """One batch of recovery: (how many jobs were put back or killed, whether more may wait)."""
    now = time.time()
    decided = find_expired(conn, now, limit)
    written = write_expired(conn, decided, now)
    # A full batch of which nothing could be written (rows the fence cannot match, however
    # damaged) must not make the caller ask again forever.
    return written, len(decided) >= limit and written > 0
