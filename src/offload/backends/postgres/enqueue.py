"""Storing a batch of jobs, on a pooled connection or on the caller's own connection.

One code path serves both: a :class:`Runner` executes statements on either an async psycopg
connection or a sync one (Django's, SQLAlchemy's raw psycopg connection), so transactional
enqueue and ordinary enqueue cannot drift apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

import psycopg

from offload.backends.postgres.queries import N_COLUMNS, decode_row
from offload.errors import BackendUnavailable, QueueFull
from offload.job import JobRecord, NewJob


class Runner(Protocol):
    async def rows(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]: ...

    def atomic(self) -> contextlib.AbstractAsyncContextManager[None]: ...


class AsyncRunner:
    """Statements on an async connection; ``atomic`` opens a transaction or a savepoint."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def rows(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cur = await self._conn.execute(query, params, binary=True)
        return await cur.fetchall() if cur.description is not None else []

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        async with self._conn.transaction():
            yield


class SyncRunner:
    """Statements on a caller's sync connection. They block the event loop for the length of
    the enqueue; the connection belongs to a thread that is waiting for this result anyway."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    async def rows(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cur = self._conn.execute(query, params, binary=True)
        return cur.fetchall() if cur.description is not None else []

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        with self._conn.transaction():
            yield


def _collapse(jobs: Sequence[NewJob]) -> tuple[list[NewJob], list[int]]:
    """Keep the first job of each key; ``where[i]`` is the index in the batch for ``jobs[i]``."""
    batch: list[NewJob] = []
    first_by_key: dict[str, int] = {}
    where: list[int] = []
    for job in jobs:
        if job.key is not None and job.key in first_by_key:
            where.append(first_by_key[job.key])
            continue
        if job.key is not None:
            first_by_key[job.key] = len(batch)
        where.append(len(batch))
        batch.append(job)
    return batch, where


def _params(batch: Sequence[NewJob], channel: str) -> dict[str, Any]:
    return {
        "ids": [j.id for j in batch],
        "tasks": [j.task for j in batch],
        "queues": [j.queue for j in batch],
        "args": [j.args for j in batch],
        "priorities": [j.priority for j in batch],
        "max_attempts": [j.max_attempts for j in batch],
        "delays": [float(j.delay_s) for j in batch],
        "run_ats": [j.run_at for j in batch],
        "keys": [j.key for j in batch],
        "channel": channel,
    }


async def enqueue_batch(
    runner: Runner,
    queries: Mapping[str, str],
    jobs: Sequence[NewJob],
    limits: Mapping[str, int] | None,
    *,
    channel: str,
    lock_ns: int,
    always_atomic: bool,
) -> list[JobRecord]:
    """Store ``jobs`` (see ``Backend.enqueue``). Without limits the batch is one statement
    (atomic on its own); with limits, the queue locks, insert and check share a transaction."""
    if not jobs:
        return []
    batch, where = _collapse(jobs)
    limited = sorted({j.queue for j in batch if limits and j.queue in limits})
    scope = runner.atomic() if (limited or always_atomic) else contextlib.nullcontext()
    async with scope:
        if limited:
            await runner.rows(queries["lock_queues"], {"ns": lock_ns, "queues": limited})
        inserted = _records(await runner.rows(queries["enqueue"], _params(batch, channel)))
        if limited and limits:
            await _check_limits(runner, queries, inserted, limited, limits)
    existing: dict[str, JobRecord] = {}
    missing = [j.key for j in batch if j.id not in inserted and j.key is not None]
    if missing:
        rows = await runner.rows(queries["active_by_keys"], {"keys": missing})
        existing = {r.key: r for r in _records(rows).values() if r.key is not None}
    out: list[JobRecord] = []
    for i in where:
        new = batch[i]
        rec = inserted.get(new.id) or (existing.get(new.key) if new.key else None)
        if rec is None:
            # The active job holding this key finished between our insert and our read.
            raise BackendUnavailable("enqueue raced with a job finishing; try again")
        out.append(rec)
    return out


def _records(rows: Sequence[Sequence[Any]]) -> dict[str, JobRecord]:
    out: dict[str, JobRecord] = {}
    for row in rows:
        rec = decode_row(row[:N_COLUMNS])
        if rec is not None:
            out[rec.id] = rec
    return out


async def _check_limits(
    runner: Runner,
    queries: Mapping[str, str],
    inserted: Mapping[str, JobRecord],
    limited: Sequence[str],
    limits: Mapping[str, int],
) -> None:
    # Only queues that actually received a job are checked: deduplicated jobs do not count.
    grew = sorted({r.queue for r in inserted.values()} & set(limited))
    if not grew:
        return
    cap = max(limits[q] for q in grew) + 1
    rows = await runner.rows(queries["waiting_counts"], {"queues": grew, "cap": cap})
    for queue, waiting in rows:
        if waiting > limits[queue]:
            raise QueueFull(queue, limits[queue])
