"""``listen=shared``: LISTEN on the pool's only connection, so a process holds one connection.

A connection that has run LISTEN receives notifications whenever the server sends them, but
psycopg reads them only while something runs on it: during a query they are kept in the
connection's backlog, and while idle they wait in the socket. So :class:`SharedListener`
holds the connection whenever no query wants it: it watches the socket, and on data drains
it with ``notifies(timeout=0)`` (which yields the backlog first). A caller about to take a
connection says so (:meth:`SharedListener.wanted`), and the listener hands the connection
back at once; it takes it again after the caller is done, and drains what arrived meanwhile.

The cost against a listener of its own: a notification that arrives during a query is
heard when that query returns (one query's time later), never lost. When the pool replaces
the connection (dropped, restarted server, max lifetime), notifications sent before the new
one LISTENs are lost, so every waiter is woken once, as :class:`Listener` does on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = logging.getLogger("offload.backends.postgres")
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.2, 2.0
_Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]


class SharedChannel:
    """One channel's view of a :class:`SharedListener`; what the backend calls a listener."""

    def __init__(self, hub: SharedListener) -> None:
        self._hub = hub
        self.ready = hub.ready

    def start(self) -> None:
        self._hub.start()

    async def stop(self) -> None:
        await self._hub.stop()


class SharedListener:
    """LISTEN on every channel :meth:`add`-ed, over the pool's connection while it is idle."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._channels: dict[str, tuple[Callable[[str], None], Callable[[], None]]] = {}
        self._listening: set[str] = set()  # channels LISTENed on ``_conn``
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._wanted = 0
        self._want = asyncio.Event()
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def add(
        self, channel: str, on_payload: Callable[[str], None], on_ready: Callable[[], None]
    ) -> SharedChannel:
        self._channels[channel] = (on_payload, on_ready)
        self._want.set()  # if the connection is held, come round again to LISTEN on it
        return SharedChannel(self)

    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="offload-listen-shared")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # The flag too: Python 3.11's wait_for (in the pool's checkout) drops a
            # cancellation that lands as the connection is handed over.
            self._closing = True
            self._want.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.ready.clear()
        self._conn = None

    @contextlib.contextmanager
    def wanted(self) -> Iterator[None]:
        """Around a caller's wait for the connection: the listener lets go of it."""
        self._wanted += 1
        self._want.set()
        try:
            yield
        finally:
            self._wanted -= 1
            if not self._wanted:
                self._want.clear()

    async def _run(self) -> None:
        backoff_s = _BACKOFF_MIN_S
        while not self._closing:
            try:
                async with self._pool.connection() as conn:
                    await self._hold(conn)
                backoff_s = _BACKOFF_MIN_S
                # Let a waiting caller's checkout go first (the pool serves waiters in order).
                await asyncio.sleep(0)
            except PoolTimeout:
                continue  # a long query holds the connection (or the pool reconnects): wait on
            except (psycopg.Error, OSError) as exc:
                log.info("shared listener lost its connection (%s); retrying", exc)
                self.ready.clear()
                self._conn = None
                await asyncio.sleep(backoff_s * random.uniform(0.5, 1.0))
                backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)

    async def _hold(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN if this connection has not, hear what is waiting, then wait on the socket
        until data comes (hear it) or a caller wants the connection (return)."""
        fresh = conn is not self._conn
        if fresh:
            self._conn, self._listening = conn, set()
        for channel in [c for c in self._channels if c not in self._listening]:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._listening.add(channel)
        if fresh:
            self.ready.set()
            for _, on_ready in list(self._channels.values()):
                on_ready()
        if not self._wanted and not self._closing:
            self._want.clear()  # set by add() for a channel this connection now LISTENs on
        while not self._want.is_set():
            await self._drain(conn)
            if not await self._readable_or_wanted(conn.fileno()):
                return
        await self._drain(conn)

    async def _drain(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # aclosing: a generator left suspended (cancelled mid-loop) would keep the
        # connection's lock, and the pool's return of the connection would wait on it forever.
        async with contextlib.aclosing(conn.notifies(timeout=0)) as notes:
            async for note in notes:
                handlers = self._channels.get(note.channel)
                if handlers is not None:
                    handlers[0](note.payload)

    async def _readable_or_wanted(self, fd: int) -> bool:
        """True when the socket has data; False when a caller wants the connection."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, on_readable)
        want: asyncio.Future[Any] = asyncio.ensure_future(self._want.wait())
        try:
            await asyncio.wait([readable, want], return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(fd)
            want.cancel()
            readable.cancel()
        return readable.done() and not readable.cancelled()
