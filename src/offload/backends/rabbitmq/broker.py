"""The broker both RabbitMQ forms talk to: a connection (:mod:`.connection`: topology,
publishing) and the feeds that consume its work queues.

Messages reach a claim through a :class:`~offload.backends.rabbitmq.feed.Feed` per work queue
(``basic.consume`` on its own channel, ``basic.get`` as the fallback); a sweeper stops feeds
nobody uses so that an instance that is not claiming holds no messages.

Delivery tags belong to a channel: after a reconnect, deliveries of the old connection are
forgotten (the broker has already put them back), never acked by tag on a new channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from offload.backends.rabbitmq.connection import ENGINE_ERRORS, Connection, Outgoing
from offload.backends.rabbitmq.feed import Delivery, Feed, Returner, settle
from offload.errors import BackendUnavailable

SWEEP_S = 0.05  # how often idle feeds are looked for (see feed.LINGER_S, HOLD_S)


class Broker(Connection):
    """A :class:`Connection` and the feeds that consume its work queues, one channel each."""

    def __init__(
        self,
        url: str,
        prefix: str,
        connection_name: str,
        timeout_s: float,
        *,
        copy_back: Callable[[Delivery], Outgoing] | None = None,
    ) -> None:
        """``copy_back``: the store-less form. Its queues have names of their own (``P.m.``,
        ``P.md.``), and messages are handed back by publishing ``copy_back(delivery)`` and
        acking the original (see :mod:`offload.backends.rabbitmq.feed`), not by
        ``basic.nack``."""
        infixes = ("q", "d") if copy_back is None else ("m", "md")
        super().__init__(url, prefix, connection_name, timeout_s, infixes=infixes)
        self._copy_of = copy_back
        self._feeds: dict[str, Feed] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def _drop(self) -> None:
        self._feeds = {}  # their channels close with the connection
        await super()._drop()

    async def close(self) -> None:
        """Stop the sweeper, hand buffered messages back and close the connection (which
        returns every message still unacked)."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        async with self._lock:
            for feed in list(self._feeds.values()):
                with contextlib.suppress(*ENGINE_ERRORS):
                    await asyncio.wait_for(feed.stop(), self._timeout_s)
            await self._drop()

    async def feed(self, queue: str) -> Feed:
        """The feed of ``queue`` on the current connection (created, not started, if new)."""
        await self.ensure()
        found = self._feeds.get(queue)
        if found is not None and not found.channel.is_closed:
            return found
        try:
            await self._work_queue(queue, self._channel())
            if self._conn is None:
                raise BackendUnavailable("RabbitMQ connection closed while in use")
            channel = await self._conn.channel(publisher_confirms=False)
            raw = await channel.get_underlay_channel()
        except ENGINE_ERRORS as exc:
            self.broken()
            raise BackendUnavailable(f"RabbitMQ channel failed: {exc!r}") from None
        found = self._feeds.get(queue)  # another claim may have made one meanwhile
        if found is not None and not found.channel.is_closed:
            with contextlib.suppress(*ENGINE_ERRORS):
                await channel.close()
            return found
        returner: Returner | None = None if self._copy_of is None else self._copy_back
        found = Feed(
            queue, self.work_name(queue), raw, self.generation, self.wake, self._timeout_s,
            returner,
        )  # fmt: skip
        self._feeds[queue] = found
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="offload-rabbitmq-sweeper")
        return found

    def buffered(self, queues: Sequence[str]) -> bool:
        """Whether a feed of these queues holds messages no claim has taken yet."""
        return any((f := self._feeds.get(q)) is not None and f.buffered for q in queues)

    async def take(self, queue: str, limit: int, prefetch: int) -> list[Delivery]:
        """Up to ``limit`` messages of ``queue``: pushed ones first, then one ``basic.get``
        when none was pushed. Starts the queue's feed with ``prefetch`` if it is stopped.
        Raises BackendUnavailable (messages taken so far go back to the broker)."""
        if limit <= 0:
            return []
        feed = await self.feed(queue)
        feed.use()
        try:
            await feed.start(prefetch)
            out = feed.take(limit)
            if not out:
                # Nothing pushed: either the queue is empty or this consumer's prefetch is used
                # up by messages still unacked. A get answers both, and is a barrier: what was
                # pushed before its answer is in the buffer by then.
                got = await feed.get(1)
                out = feed.take(limit - len(got)) + got
                if got and len(out) < limit and feed.starved:
                    out += await feed.get(limit - len(out))  # held messages use up the prefetch
            return out
        except ENGINE_ERRORS as exc:
            self.broken()
            raise BackendUnavailable(f"RabbitMQ consume failed: {exc!r}") from None
        finally:
            feed.done()

    async def hand_back(self, deliveries: Sequence[Delivery]) -> None:
        """Return unstarted deliveries to their queue, the way this broker's feeds do."""
        if self._copy_of is None:
            await self.settle([], deliveries)
        else:
            await self._copy_back(deliveries)

    async def _copy_back(self, deliveries: Sequence[Delivery]) -> None:
        """Hand messages back as confirmed copies at the tail of their queue, then ack the
        originals. If the copies are not confirmed, the originals stay unacked and the broker
        returns them when this (now broken) connection is closed."""
        # Only deliveries that can still be acked: one of an old connection or a closed channel
        # is back in its queue already (a copy would be a duplicate). And never through
        # ensure()'s lock, which close() holds while it stops the feeds: hence _usable() here.
        live = [d for d in deliveries if d.generation == self.generation]
        live = [d for d in live if not d.channel.is_closed]
        if not live or not self._usable() or self._copy_of is None:
            return
        try:
            await self.publish([self._copy_of(d) for d in live])
        except BackendUnavailable:
            return
        await settle(live, [], self.generation)

    def give_back(self, queue: str, deliveries: Sequence[Delivery]) -> None:
        """Return taken deliveries to their feed's buffer (for the next claim)."""
        feed = self._feeds.get(queue)
        live = [d for d in deliveries if d.generation == self.generation]
        if feed is not None and feed.generation == self.generation:
            feed.give_back([d for d in live if d.channel is feed.channel])

    async def listen(self, queues: Sequence[str], prefetch: int) -> list[Feed]:
        """Start (or keep) the feeds of ``queues`` for a wait; the caller must call
        ``done()`` on each when the wait ends."""
        feeds: list[Feed] = []
        try:
            for queue in queues:
                feed = await self.feed(queue)
                feed.use()
                feeds.append(feed)
                await feed.start(prefetch)
        except (BackendUnavailable, *ENGINE_ERRORS):  # type: ignore[misc]
            for feed in feeds:
                feed.done()
            self.broken()
            return []
        return feeds

    async def wait(self, queues: Sequence[str], prefetch: int, timeout_s: float) -> None:
        """Consume ``queues`` (feeds started with ``prefetch``) while waiting; return when a
        message is pushed for one of them, when a wake note arrives, or at ``timeout_s``."""
        if self.wake.is_set() or self.buffered(queues):
            self.wake.clear()
            return
        feeds = await self.listen(queues, prefetch)
        try:
            if not self.buffered(queues):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=max(timeout_s, 0.0))
        finally:
            for feed in feeds:
                feed.done()
        self.wake.clear()

    async def pause(self, queue: str) -> None:
        """Stop consuming ``queue`` and hand its buffered messages back."""
        feed = self._feeds.get(queue)
        if feed is not None:
            with contextlib.suppress(*ENGINE_ERRORS):
                await feed.stop()

    async def _sweep(self) -> None:
        """Stop feeds that nobody has claimed from or waited on for a while."""
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for feed in list(self._feeds.values()):
                if feed.idle(now):
                    with contextlib.suppress(*ENGINE_ERRORS):
                        # shielded: close() cancels the sweeper, and a stop cut off between
                        # copying messages back and acking the originals would duplicate them
                        await asyncio.shield(feed.stop())

    async def settle(self, acks: Sequence[Delivery], requeues: Sequence[Delivery]) -> None:
        """Ack ``acks`` and return ``requeues`` to their queue; a delivery of an older
        connection is skipped (the broker already put it back)."""
        await settle(acks, requeues, self.generation)

    async def sync(self, deliveries: Sequence[Delivery]) -> None:
        """Wait until the broker has processed what was sent on these deliveries' channels
        (a round trip on each channel: AMQP handles a channel's methods in order)."""
        for channel in {id(d.channel): d.channel for d in deliveries}.values():
            with contextlib.suppress(*ENGINE_ERRORS):
                await channel.basic_qos(prefetch_count=0, timeout=self._timeout_s)
