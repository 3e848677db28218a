"""The AMQP side of the rabbitmq:// backend: one connection, its channels, the topology.

Topology under a prefix ``P`` (every name is the prefix, a dot, then the rest):

* ``P.q.<queue>``: the work queue of an offload queue. Durable, classic, ``x-max-priority=9``
  (RabbitMQ 3.x quorum queues have no per-message priority, and offload's priorities are
  0..9). A message is the job id as its ``message_id`` and an empty body; persistent and
  published with confirms.
* ``P.d.<queue>.<ms>``: a delay queue. Every message in it lives exactly ``ms`` milliseconds
  (``x-message-ttl``), then is dead-lettered back to ``P.q.<queue>``. ``ms`` is a power of two,
  so a delay is a chain of at most ~32 hops and no message ever waits behind a longer one
  (one TTL per queue: no head-of-line blocking, no plugin).
* ``P.m.<queue>`` and ``P.md.<queue>.<ms>``: the same for the store-less backend, whose
  messages carry their job (:mod:`offload.backends.rabbitmq.direct`).
* ``P.dead.<queue>``: the dead letters of the store-less backend (a durable classic queue
  nobody consumes; see :mod:`offload.backends.rabbitmq.direct`).
* ``P.wake``: a fanout exchange; enqueues publish a tiny transient note to it and every backend
  instance listens through its own exclusive queue, so ``wait_for_work`` wakes without polling.

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
from typing import Any, NamedTuple

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
)

from offload.backends.rabbitmq.delays import delay_chain
from offload.backends.rabbitmq.feed import Delivery, Feed, Returner, settle
from offload.errors import BackendUnavailable

MAX_PRIORITY = 9
SWEEP_S = 0.05  # how often idle feeds are looked for (see rabbitmq_feed.LINGER_S, HOLD_S)

# What a broken or refused connection raises, across aio-pika, aiormq and the socket layer.
ENGINE_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika raises it for operations on a closed channel
)


class Outgoing(NamedTuple):
    """One message to publish: a job's id, its queue, priority and delay (ms)."""

    job_id: str
    queue: str
    priority: int
    delay_ms: int
    body: bytes = b""  # empty with a state store: the id is all a worker needs
    dead: bool = False  # to the queue's dead letters instead of its work queue
    error: str | None = None  # why it is dead (header ``x-offload-error``)


class Broker:
    """A connection with a publishing channel (confirms on), a few getting channels and the
    wake listener. Reconnects lazily: an operation after a failure opens a new connection."""

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
        ``P.md.``: the two forms' messages are not interchangeable, so they must not meet),
        and messages are handed back by publishing ``copy_back(delivery)`` and acking the
        original (see :mod:`offload.backends.rabbitmq.feed`), not by ``basic.nack``."""
        self._url = url
        self._copy_of = copy_back
        self._work_infix, self._delay_infix = ("q", "d") if copy_back is None else ("m", "md")
        self.prefix = prefix
        self.connection_name = connection_name
        self._timeout_s = timeout_s
        self._conn: AbstractConnection | None = None
        self._pub: AbstractChannel | None = None
        self._feeds: dict[str, Feed] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._declared: dict[str, AbstractQueue] = {}
        self._seen: set[str] = set()  # every queue declared, across reconnects
        self._stale = False
        self._lock = asyncio.Lock()
        self.generation = 0
        self.wake = asyncio.Event()
        self._wake_queue: AbstractQueue | None = None
        self._notes: AbstractExchange | None = None  # the wake exchange, on a channel without
        # publisher confirms: a lost note costs a poll interval, waiting for its confirm cost
        # every enqueue a round trip

    # -- connection ------------------------------------------------------------------------

    async def ensure(self) -> None:
        """Connect (again) if needed. Raises BackendUnavailable."""
        if self._usable():
            return
        async with self._lock:
            if self._usable():
                return
            await self._drop()
            try:
                await self._connect()
            except ENGINE_ERRORS as exc:
                await self._drop()
                raise BackendUnavailable(f"RabbitMQ unavailable: {exc!r}") from None

    def _usable(self) -> bool:
        return (
            not self._stale
            and self._conn is not None
            and not self._conn.is_closed
            and self._pub is not None
            and not self._pub.is_closed
        )

    async def _connect(self) -> None:
        conn = await aio_pika.connect(
            self._url,
            timeout=self._timeout_s,
            client_properties={"connection_name": self.connection_name},
        )
        self._conn = conn
        self._stale = False
        self.generation += 1
        self._pub = await conn.channel(publisher_confirms=True)
        self._feeds = {}
        self._declared = {}
        exchange = await self._pub.declare_exchange(
            f"{self.prefix}.wake", aio_pika.ExchangeType.FANOUT, durable=True
        )
        notes = await conn.channel(publisher_confirms=False)
        self._notes = await notes.get_exchange(f"{self.prefix}.wake", ensure=False)
        listen = await self._pub.declare_queue(exclusive=True, auto_delete=True)
        await listen.bind(exchange)
        await listen.consume(self._on_wake, no_ack=True)
        self._wake_queue = listen
        self.wake.set()  # deliveries may have come back while we were away

    async def _on_wake(self, message: AbstractIncomingMessage) -> None:
        self.wake.set()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._pub, self._feeds, self._declared, self._notes = None, {}, {}, None
        if conn is not None:
            with contextlib.suppress(*ENGINE_ERRORS):
                await conn.close()

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

    def broken(self) -> None:
        """Forget a connection that failed under us; the next operation reconnects."""
        self._stale = True

    # -- topology --------------------------------------------------------------------------

    def declared(self) -> set[str]:
        return set(self._seen)

    def work_name(self, queue: str) -> str:
        return f"{self.prefix}.{self._work_infix}.{queue}"

    def dead_name(self, queue: str) -> str:
        return f"{self.prefix}.dead.{queue}"

    def _channel(self) -> AbstractChannel:
        """The publishing channel; BackendUnavailable if the connection was dropped meanwhile."""
        if self._pub is None:
            raise BackendUnavailable("RabbitMQ connection closed while in use")
        return self._pub

    async def _work_queue(self, queue: str, pub: AbstractChannel) -> AbstractQueue:
        name = self.work_name(queue)
        found = self._declared.get(name)
        if found is None:
            args: dict[str, Any] = {"x-max-priority": MAX_PRIORITY}
            found = await pub.declare_queue(name, durable=True, arguments=args)
            self._declared[name] = found
            self._seen.add(name)
        return found

    async def _dead_queue(self, queue: str, pub: AbstractChannel) -> str:
        name = self.dead_name(queue)
        if name not in self._declared:
            self._declared[name] = await pub.declare_queue(name, durable=True)
            self._seen.add(name)
        return name

    async def _delay_queue(self, queue: str, ttl_ms: int, pub: AbstractChannel) -> str:
        name = f"{self.prefix}.{self._delay_infix}.{queue}.{ttl_ms}"
        if name not in self._declared:
            args: dict[str, Any] = {
                "x-message-ttl": ttl_ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.work_name(queue),
                # no x-expires: "unused" ignores the messages a queue holds, so an expiring
                # delay queue could take a delayed job with it
            }
            self._declared[name] = await pub.declare_queue(name, durable=True, arguments=args)
            self._seen.add(name)
        return name

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, items: Sequence[Outgoing]) -> None:
        """Publish the messages and wait for every confirm.

        A positive delay goes to the first delay queue of its chain. Raises BackendUnavailable
        when any message was not confirmed (some may have been: the caller decides).
        """
        if not items:
            return
        await self.ensure()
        pub = self._channel()
        try:
            sends = []
            for item in items:
                await self._work_queue(item.queue, pub)
                key = await self._route(item, pub)
                # The job id travels as the message id; with a state store the body is empty:
                # one frame less for the broker and for every consumer to parse.
                message = aio_pika.Message(
                    item.body,
                    message_id=item.job_id,
                    delivery_mode=DeliveryMode.PERSISTENT,
                    priority=max(0, min(item.priority, MAX_PRIORITY)),
                    headers=None if item.error is None else {"x-offload-error": item.error},
                )
                sends.append(pub.default_exchange.publish(message, routing_key=key))
            results = await asyncio.gather(*sends, return_exceptions=True)
        except ENGINE_ERRORS as exc:
            self.broken()
            raise BackendUnavailable(f"RabbitMQ publish failed: {exc!r}") from None
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed or any(not isinstance(r, aiormq.spec.Basic.Ack) for r in results):
            self.broken()
            raise BackendUnavailable(f"RabbitMQ did not confirm every message: {failed[:1]!r}")

    async def _route(self, item: Outgoing, pub: AbstractChannel) -> str:
        if item.dead:
            return await self._dead_queue(item.queue, pub)
        hop = delay_chain(item.delay_ms)
        if not hop:
            return self.work_name(item.queue)
        return await self._delay_queue(item.queue, hop, pub)

    async def notify(self) -> None:
        """Tell every listening instance that work was published (best effort)."""
        exchange = self._notes
        if exchange is None:
            return
        with contextlib.suppress(*ENGINE_ERRORS):
            await exchange.publish(aio_pika.Message(b""), routing_key="")

    # -- consuming -------------------------------------------------------------------------

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

    async def delete_topology(self, queues: Sequence[str]) -> None:
        """Delete every queue of ``queues`` under this prefix, and the wake exchange (tests)."""
        await self.ensure()
        assert self._pub is not None
        channel = await self._conn.channel() if self._conn else self._pub
        for name in queues:
            with contextlib.suppress(*ENGINE_ERRORS):
                await channel.queue_delete(name)
        with contextlib.suppress(*ENGINE_ERRORS):
            await channel.exchange_delete(f"{self.prefix}.wake")
        with contextlib.suppress(*ENGINE_ERRORS):
            await channel.close()
