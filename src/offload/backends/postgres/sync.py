"""The PostgreSQL backend's sync path: the same enqueue, on a sync connection of the caller's
thread.

A sync ``enqueue()`` (a Django or Flask view, a script, a sync task) would otherwise hop into
the event loop the backend lives on and back. Here it takes a connection from a small sync
pool (psycopg_pool's is thread-safe), made on first use, and runs :func:`enqueue_batch`, the
very code the async path runs, through :class:`SyncQueryConn`: on a sync connection that
coroutine never suspends, so :func:`run_unsuspended` steps it to its end on this thread.
"""

from __future__ import annotations

import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from offload.backends.postgres.pool import pool_options, readable
from offload.backends.postgres.queries import Options

T = TypeVar("T")


def run_unsuspended(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that completes without ever suspending (it awaits only
    other such coroutines); a coroutine that does suspend is a bug, and raises here."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a sync enqueue step awaited real I/O")


class SyncPool:
    """A lazily opened pool of sync autocommit connections, as the async pool's."""

    def __init__(self, opts: Options, name: str) -> None:
        self._opts = opts
        self._name = name
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None

    def _get(self) -> ConnectionPool[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is None:
                pool = ConnectionPool(
                    **pool_options(self._opts, self._name), check=_check_idle_connection
                )
                pool.open(wait=True, timeout=self._opts.timeout_s)
                self._pool = pool
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._get().connection() as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def _check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """The async pool's cheap check (see :func:`offload.backends.postgres.pool`), sync."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    if readable(conn.fileno()):
        ConnectionPool.check_connection(conn)
