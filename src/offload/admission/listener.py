"""What a waiting request's ``receive`` is doing: the middleware listens on it while the
request waits, to notice a client that goes away, and replays what it heard to the app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from offload.admission.types import Message, Receive, Scope

# While a request waits, the middleware listens for the client going away. Body chunks that
# arrive meanwhile are held and handed to the app in order; past this many bytes it stops
# listening, so a queue of large uploads cannot fill memory (backpressure applies instead).
MAX_HELD_BODY_BYTES = 64 * 1024


class Listener:
    """Listens on ``receive`` while a request waits: notices disconnects, holds body chunks."""

    def __init__(self, receive: Receive, on_disconnect: Callable[[], None]) -> None:
        self._receive = receive
        self._held: list[Message] = []
        self._pending: asyncio.Future[Message] | None = None
        self._task = asyncio.get_running_loop().create_task(self._listen(on_disconnect))

    async def _listen(self, on_disconnect: Callable[[], None]) -> None:
        held_bytes = 0
        while held_bytes <= MAX_HELD_BODY_BYTES:
            self._pending = asyncio.ensure_future(self._receive())
            # Shielded so that admission can stop this loop while a receive is in progress and
            # hand that receive to the app: not every server's receive survives cancellation.
            message = await asyncio.shield(self._pending)
            self._pending = None
            self._held.append(message)
            if message["type"] == "http.disconnect":
                on_disconnect()
                return
            held_bytes += len(message.get("body", b""))

    def admit(self) -> None:
        """Stop listening; what was held and any receive in progress go to the app."""
        self._task.cancel()

    async def close(self) -> None:
        """Stop listening for good, cancelling any receive in progress."""
        self._task.cancel()
        if self._pending is not None:
            self._pending.cancel()
        await asyncio.gather(self._task, *filter(None, [self._pending]), return_exceptions=True)

    async def replay(self) -> Message:
        """The app's ``receive``: held messages first, then the receive in progress, if any."""
        if self._held:
            return self._held.pop(0)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return await pending
        return await self._receive()


def expects_continue(scope: Scope) -> bool:
    return any(k == b"expect" and v.lower() == b"100-continue" for k, v in scope["headers"])
