"""Recovery of expired leases on PostgreSQL: the engine finds the jobs and writes the fate that
``offload.backends.common.expired_lease`` decided for each, fenced on the lease it found.

One transaction per batch: the find locks its rows (``FOR UPDATE SKIP LOCKED``, so workers
recovering at once split the work instead of queueing behind each other) and reads the
database clock; the write applies every decision in one statement. Time is the database's,
never a worker's wall clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from offload.backends.common import ExpiredJob, decide_expired, encoded_error
from offload.backends.postgres.enqueue import QueryConn


@dataclass(frozen=True)
class Channels:
    """Where recovery announces its work: ``work`` per queue that got a job back, ``done`` per
    job that went dead."""

    work: str
    done: str


async def find_expired(
    qc: QueryConn, queries: Mapping[str, str], limit: int
) -> tuple[list[ExpiredJob], float | None]:
    """Up to ``limit`` expired running jobs, locked, each with its fate; and the database time
    that found them expired (None when there were none)."""
    rows = await qc.rows(queries["expired_leases"], {"limit": limit})
    if not rows:
        return [], None
    now = float(rows[0][4])
    return decide_expired([row[:4] for row in rows], now), now


async def write_expired(
    qc: QueryConn,
    queries: Mapping[str, str],
    decided: Sequence[ExpiredJob],
    now: float,
    channels: Channels,
) -> int:
    """Apply the decisions in one statement and notify; return how many jobs they changed. A
    job no longer ``running`` with the found attempt and worker, or whose lease is no longer
    expired at ``now``, is left alone (fenced)."""
    if not decided:
        return 0
    params: dict[str, Any] = {
        "ids": [j.id for j in decided],
        "attempts": [j.attempt for j in decided],
        "worker_ids": [j.worker_id for j in decided],
        "states": [j.fate.state.value for j in decided],
        "entries": [encoded_error(j.fate.error) for j in decided],
        "now": now,
        "channel": channels.work,
        "done_channel": channels.done,
    }
    rows = await qc.rows(queries["write_expired_leases"], params)
    return int(rows[0][0])


async def recover_batch(
    qc: QueryConn, queries: Mapping[str, str], limit: int, channels: Channels
) -> tuple[int, bool]:
    """One batch in one transaction: (how many jobs were put back or killed, whether more may
    wait)."""
    async with qc.atomic():
        decided, now = await find_expired(qc, queries, limit)
        if now is None:
            return 0, False
        written = await write_expired(qc, queries, decided, now, channels)
    # The found rows are locked, so all are written; should none be, asking again cannot help.
    return written, len(decided) >= limit and written > 0
