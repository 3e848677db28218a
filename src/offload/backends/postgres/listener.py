"""A dedicated LISTEN connection that reconnects on its own.

Notifications ride on one connection outside the pool (a pooled connection would be handed to
queries). When the connection drops, :attr:`Listener.ready` is cleared so waiters fall back to
short polls, and after it is back every waiter is woken once, since notifications sent while it
was down are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
from psycopg import sql

log = logging.getLogger("offload.backends.postgres")

# A silently dead peer (cable cut, VM paused) is noticed by TCP keepalives within ~20 s.
_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.2, 2.0


class Listening(Protocol):
    """What the backend needs of a listener: this one, or a channel of the shared one."""

    ready: asyncio.Event

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class Listener:
    """LISTEN on ``channel``; call ``on_payload`` per notification, ``on_ready`` per (re)connect."""

    def __init__(
        self,
        conninfo: str,
        channel: str,
        on_payload: Callable[[str], None],
        on_ready: Callable[[], None],
        connect_timeout_s: float,
    ) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._on_payload = on_payload
        self._on_ready = on_ready
        self._connect_timeout_s = connect_timeout_s
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"offload-listen-{self._channel}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.ready.clear()

    async def _run(self) -> None:
        backoff_s = _BACKOFF_MIN_S
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=max(1, round(self._connect_timeout_s)),
                    **_KEEPALIVES,
                )
            except (psycopg.Error, OSError) as exc:
                log.debug("listener connect failed: %s", exc)
                await asyncio.sleep(backoff_s * random.uniform(0.5, 1.0))
                backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
                continue
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                backoff_s = _BACKOFF_MIN_S
                self.ready.set()
                self._on_ready()
                async for note in conn.notifies():
                    self._on_payload(note.payload)
            except (psycopg.Error, OSError) as exc:
                log.info("listener connection lost (%s); reconnecting", exc)
            finally:
                self.ready.clear()
                with contextlib.suppress(psycopg.Error, OSError):
                    await conn.close()
