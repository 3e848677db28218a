"""The connection pool, and its check of a connection on checkout."""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from offload.backends.postgres.queries import Options


def pool_options(opts: Options, name: str) -> dict[str, Any]:
    """The options both pools (the async one, and the sync one of ``enqueue_now``) share:
    autocommit connections, ``pool_size`` of them at most, unopened, retried for a day."""
    return {
        "conninfo": opts.conninfo,
        "min_size": 1,
        "max_size": opts.pool_size,
        "kwargs": {"autocommit": True, "connect_timeout": max(1, round(opts.timeout_s))},
        "open": False,
        "timeout": opts.timeout_s,
        "reconnect_timeout": 24 * 3600.0,
        "name": name,
    }


def make_pool(opts: Options, name: str) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """An unopened pool of autocommit connections for ``opts``."""
    return AsyncConnectionPool(**pool_options(opts, name), check=check_idle_connection)


async def check_idle_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Raise if a pooled connection is dead, so that the pool replaces it before the caller's
    statement fails on it (after a database restart, say).

    A round trip per checkout doubled the round trips of every operation. Instead: a connection
    the server has closed (restart, ``pg_terminate_backend``, idle timeout) has its farewell
    error and end-of-file waiting to be read, while a healthy idle one has nothing to read.
    Only a connection with something to read pays for the full check.
    """
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    if readable(conn.fileno()):
        await AsyncConnectionPool.check_connection(conn)


def readable(fd: int) -> bool:
    if hasattr(select, "poll"):  # no descriptor-number limit, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])
