"""The AMQP side of the rabbitmq:// backend: one connection, its channels, the topology.

Topology under a prefix ``P`` (every name is the prefix, a dot, then the rest):

* ``P.q.<queue>``: the work queue of an offload queue. Durable, classic, ``x-max-priority=9``
  (RabbitMQ 3.x quorum queues have no per-message priority, and offload's priorities are
  0..9). Messages are persistent and published with confirms.
* ``P.d.<queue>.<ms>``: a delay queue. Every message in it lives exactly ``ms`` milliseconds
  (``x-message-ttl``), then is dead-lettered back to ``P.q.<queue>``. ``ms`` is a power of two,
  so a delay is a chain of at most ~32 hops and no message ever waits behind a longer one
  (one TTL per queue: no head-of-line blocking, no plugin).
* ``P.wake``: a fanout exchange; enqueues publish a tiny transient note to it and every backend
  instance listens through its own exclusive queue, so ``wait_for_work`` wakes without polling.

Delivery tags belong to a channel: after a reconnect, deliveries of the old connection are
forgotten (the broker has already put them back), never acked by tag on a new channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
)

from offload.errors import BackendUnavailable

MAX_PRIORITY = 9
MAX_DELAY_BIT = 31  # 2**31 ms is ~24.8 days: longer delays take one more pass through the chain
GET_CHANNELS = 4  # basic.get is one round trip per message; a few channels overlap them

# What a broken or refused connection raises, across aio-pika, aiormq and the socket layer.
ENGINE_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika raises it for operations on a closed channel
)


@dataclass(frozen=True, eq=False)
class Delivery:
    """One message this instance holds unacked: acked or returned on the channel it came on."""

    job_id: str
    queue: str
    channel: AbstractChannel
    message: AbstractIncomingMessage
    generation: int


def delay_chain(delay_ms: int) -> int:
    """The first hop of a delay: the largest power-of-two TTL not above it (0 when none)."""
    if delay_ms < 1:
        return 0
    return 1 << min(delay_ms.bit_length() - 1, MAX_DELAY_BIT)


class Broker:
    """A connection with a publishing channel (confirms on), a few getting channels and the
    wake listener. Reconnects lazily: an operation after a failure opens a new connection."""

    def __init__(self, url: str, prefix: str, connection_name: str, timeout_s: float) -> None:
        self._url = url
        self.prefix = prefix
        self.connection_name = connection_name
        self._timeout_s = timeout_s
        self._conn: AbstractConnection | None = None
        self._pub: AbstractChannel | None = None
        self._gets: list[AbstractChannel] = []
        self._get_locks: list[asyncio.Lock] = []
        self._declared: dict[str, AbstractQueue] = {}
        self._seen: set[str] = set()  # every queue declared, across reconnects
        self._stale = False
        self._lock = asyncio.Lock()
        self._next_get = 0
        self.generation = 0
        self.wake = asyncio.Event()
        self._wake_queue: AbstractQueue | None = None

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
        channels = [self._pub, *self._gets]
        return (
            not self._stale
            and self._conn is not None
            and not self._conn.is_closed
            and all(c is not None and not c.is_closed for c in channels)
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
        self._gets = [await conn.channel(publisher_confirms=False) for _ in range(GET_CHANNELS)]
        self._get_locks = [asyncio.Lock() for _ in self._gets]
        self._declared = {}
        exchange = await self._pub.declare_exchange(
            f"{self.prefix}.wake", aio_pika.ExchangeType.FANOUT, durable=True
        )
        listen = await self._gets[0].declare_queue(exclusive=True, auto_delete=True)
        await listen.bind(exchange)
        await listen.consume(self._on_wake, no_ack=True)
        self._wake_queue = listen
        self.wake.set()  # deliveries may have come back while we were away

    async def _on_wake(self, message: AbstractIncomingMessage) -> None:
        self.wake.set()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._pub, self._gets, self._declared = None, [], {}
        if conn is not None:
            with contextlib.suppress(*ENGINE_ERRORS):
                await conn.close()

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    def broken(self) -> None:
        """Forget a connection that failed under us; the next operation reconnects."""
        self._stale = True

    # -- topology --------------------------------------------------------------------------

    def declared(self) -> set[str]:
        return set(self._seen)

    def work_name(self, queue: str) -> str:
        return f"{self.prefix}.q.{queue}"

    async def _work_queue(self, queue: str) -> AbstractQueue:
        name = self.work_name(queue)
        found = self._declared.get(name)
        if found is None:
            assert self._pub is not None
            args: dict[str, Any] = {"x-max-priority": MAX_PRIORITY}
            found = await self._pub.declare_queue(name, durable=True, arguments=args)
            self._declared[name] = found
            self._seen.add(name)
        return found

    async def _delay_queue(self, queue: str, ttl_ms: int) -> str:
        name = f"{self.prefix}.d.{queue}.{ttl_ms}"
        if name not in self._declared:
            assert self._pub is not None
            args: dict[str, Any] = {
                "x-message-ttl": ttl_ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.work_name(queue),
                # no x-expires: "unused" ignores the messages a queue holds, so an expiring
                # delay queue could take a delayed job with it
            }
            self._declared[name] = await self._pub.declare_queue(name, durable=True, arguments=args)
            self._seen.add(name)
        return name

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, items: Sequence[tuple[str, str, int, int]]) -> None:
        """Publish ``(job_id, queue, priority, delay_ms)`` messages and wait for every confirm.

        A positive delay goes to the first delay queue of its chain. Raises BackendUnavailable
        when any message was not confirmed (some may have been: the caller decides).
        """
        if not items:
            return
        await self.ensure()
        try:
            assert self._pub is not None
            sends = []
            for job_id, queue, priority, delay_ms in items:
                await self._work_queue(queue)
                hop = delay_chain(delay_ms)
                key = await self._delay_queue(queue, hop) if hop else self.work_name(queue)
                body = b'{"id":"%s","queue":%s}' % (job_id.encode(), _json_str(queue))
                message = aio_pika.Message(
                    body,
                    message_id=job_id,
                    content_type="application/json",
                    delivery_mode=DeliveryMode.PERSISTENT,
                    priority=max(0, min(priority, MAX_PRIORITY)),
                )
                sends.append(self._pub.default_exchange.publish(message, routing_key=key))
            results = await asyncio.gather(*sends, return_exceptions=True)
        except ENGINE_ERRORS as exc:
            self.broken()
            raise BackendUnavailable(f"RabbitMQ publish failed: {exc!r}") from None
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed or any(not isinstance(r, aiormq.spec.Basic.Ack) for r in results):
            self.broken()
            raise BackendUnavailable(f"RabbitMQ did not confirm every message: {failed[:1]!r}")

    async def notify(self) -> None:
        """Tell every listening instance that work was published (best effort)."""
        if self._pub is None:
            return
        with contextlib.suppress(*ENGINE_ERRORS):
            exchange = await self._pub.get_exchange(f"{self.prefix}.wake", ensure=False)
            await exchange.publish(aio_pika.Message(b""), routing_key="")

    # -- consuming -------------------------------------------------------------------------

    async def get(self, queue: str, limit: int) -> list[Delivery]:
        """Take up to ``limit`` ready messages of ``queue`` (fewer when it runs dry)."""
        if limit <= 0:
            return []
        await self.ensure()
        out: list[Delivery] = []
        empty = False
        budget = limit

        async def taker(i: int) -> None:
            nonlocal empty, budget
            channel, lock = self._gets[i], self._get_locks[i]
            q = await channel.get_queue(self.work_name(queue), ensure=False)
            async with lock:
                while not empty and budget > 0:
                    budget -= 1  # reserved before the round trip: never more than limit
                    message = await q.get(no_ack=False, fail=False, timeout=self._timeout_s)
                    if message is None:
                        empty = True
                        return
                    job_id = message.message_id or ""
                    out.append(Delivery(job_id, queue, channel, message, self.generation))

        try:
            await self._work_queue(queue)
            width = min(limit, len(self._gets))
            await asyncio.gather(*(taker((self._next_get + i) % width) for i in range(width)))
        except ENGINE_ERRORS as exc:
            self.broken()
            await self.release(out, requeue=True)
            raise BackendUnavailable(f"RabbitMQ get failed: {exc!r}") from None
        self._next_get += 1
        return out

    async def settle(self, acks: Sequence[Delivery], requeues: Sequence[Delivery]) -> None:
        """Ack ``acks`` and return ``requeues`` to their queue; a delivery of an older
        connection is skipped (the broker already put it back)."""
        for d in acks:
            if d.generation == self.generation:
                with contextlib.suppress(*ENGINE_ERRORS):
                    await d.message.ack()
        await self.release(requeues, requeue=True)

    async def release(self, deliveries: Sequence[Delivery], *, requeue: bool) -> None:
        for d in deliveries:
            if d.generation == self.generation:
                with contextlib.suppress(*ENGINE_ERRORS):
                    await d.message.nack(requeue=requeue)

    async def sync(self, deliveries: Sequence[Delivery]) -> None:
        """Wait until the broker has processed what was sent on these deliveries' channels
        (a round trip on each channel: AMQP handles a channel's methods in order)."""
        for channel in {id(d.channel): d.channel for d in deliveries}.values():
            with contextlib.suppress(*ENGINE_ERRORS):
                await channel.set_qos(prefetch_count=0)

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


def _json_str(value: str) -> bytes:
    import msgspec

    return msgspec.json.encode(value)
