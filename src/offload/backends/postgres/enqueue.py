"""Storing a batch of jobs, on a pooled connection or on the caller's own connection.

One code path serves both: a :class:`QueryConn` executes statements on either an async psycopg
connection or a sync one (Django's, SQLAlchemy's raw psycopg connection), so transactional
enqueue and ordinary enqueue cannot drift apart.

Statements go through cursors made here, never ``conn.cursor()``: a caller's connection may
carry its own cursor factory (Django's default is a client-side-binding cursor, which refuses
binary results) or row factory, and offload's statements need psycopg's plain cursor with
tuple rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

import msgspec
import psycopg
from psycopg.rows import tuple_row

from offload.backends.common import collapse_same_key
from offload.backends.postgres.queries import N_COLUMNS, decode_row
from offload.backends.postgres.unique import settle_windowed
from offload.backends.unique import fold_replacements, windowed
from offload.errors import BackendUnavailable, QueueFull
from offload.job import JobRecord, NewJob


class QueryConn(Protocol):
    async def rows(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]: ...

    def atomic(self) -> contextlib.AbstractAsyncContextManager[None]: ...


class AsyncQueryConn:
    """Statements on an async connection; ``atomic`` opens a transaction or a savepoint."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def rows(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        async with psycopg.AsyncCursor(self._conn, row_factory=tuple_row) as cur:
            await cur.execute(query, params, binary=True)
            return await cur.fetchall() if _has_rows(cur) else []

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        async with self._conn.transaction():
            yield


class SyncQueryConn:
    """Statements on a caller's sync connection. They block the event loop for the length of
    the enqueue; the connection belongs to a thread that is waiting for this result anyway."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    async def rows(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with psycopg.Cursor(self._conn, row_factory=tuple_row) as cur:
            cur.execute(query, params, binary=True)
            return cur.fetchall() if _has_rows(cur) else []

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        with self._conn.transaction():
            yield


def _has_rows(cur: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> bool:
    # Not ``cur.description is not None``: that builds a Column object per column per call,
    # a tenth of the client's CPU time on a one-job enqueue.
    res = cur.pgresult
    return res is not None and res.status == _TUPLES_OK


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK


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
        "headers": [msgspec.json.encode(j.headers).decode() if j.headers else None for j in batch],
        "limits": ["\n".join(j.limits) if j.limits else None for j in batch],
        **{
            f"keep_{state}": [j.retention and getattr(j.retention, f"{state}_s") for j in batch]
            for state in ("succeeded", "dead", "cancelled")
        },
        "channel": channel,
    }


def _one_params(j: NewJob, channel: str) -> dict[str, Any]:
    own = j.retention
    return {
        "id": j.id,
        "task": j.task,
        "queue": j.queue,
        "args": j.args,
        "priority": j.priority,
        "max_attempts": j.max_attempts,
        "delay": float(j.delay_s),
        "run_at": j.run_at,
        "key": j.key,
        "headers": msgspec.json.encode(j.headers).decode() if j.headers else None,
        "limits": "\n".join(j.limits) if j.limits else None,
        "keep_succeeded": own and own.succeeded_s,
        "keep_dead": own and own.dead_s,
        "keep_cancelled": own and own.cancelled_s,
        "channel": channel,
    }


async def enqueue_batch(
    qc: QueryConn,
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
    batch, where = collapse_same_key(fold_replacements(jobs))
    limited = sorted({j.queue for j in batch if limits and j.queue in limits})
    windows = any(windowed(j) for j in batch)
    scope = qc.atomic() if (limited or always_atomic or windows) else contextlib.nullcontext()
    settled: dict[str, JobRecord] = {}
    async with scope:
        if limited:
            await qc.rows(queries["lock_queues"], {"ns": lock_ns, "queues": limited})
        if windows:
            now = (await qc.rows(queries["now"], {}))[0][0]
            settled = await settle_windowed(
                qc, queries, batch, lock_ns=lock_ns, channel=channel, now=now
            )
        to_insert = [j for j in batch if j.id not in settled]
        if len(to_insert) == 1:  # the one-by-one path: scalar parameters, far cheaper to send
            query, params = queries["enqueue_one"], _one_params(to_insert[0], channel)
        else:
            query, params = queries["enqueue"], _params(to_insert, channel)
        inserted = _records(await qc.rows(query, params))
        if limited and limits:
            await _check_limits(qc, queries, inserted, limited, limits)
    existing: dict[tuple[str, str], JobRecord] = {}
    missing = [j for j in to_insert if j.id not in inserted and j.key is not None]
    if missing:
        params = {"queues": [j.queue for j in missing], "keys": [j.key for j in missing]}
        rows = await qc.rows(queries["active_by_keys"], params)
        existing = {(r.queue, r.key): r for r in _records(rows).values() if r.key is not None}
    out: list[JobRecord] = []
    for i in where:
        new = batch[i]
        rec = settled.get(new.id) or inserted.get(new.id)
        rec = rec or (existing.get((new.queue, new.key)) if new.key else None)
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
    qc: QueryConn,
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
    rows = await qc.rows(queries["waiting_counts"], {"queues": grew, "cap": cap})
    for queue, waiting in rows:
        if waiting > limits[queue]:
            raise QueueFull(queue, limits[queue])
