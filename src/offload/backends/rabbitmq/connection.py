"""The AMQP side of the rabbitmq:// backend: one connection, its channels, the topology, and
publishing (with confirms).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
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
from offload.errors import BackendUnavailable

log = logging.getLogger("offload.backends.rabbitmq")

MAX_PRIORITY = 9

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


class Connection:
    """A connection with a publishing channel (confirms on) and the wake listener.
    Reconnects lazily: an operation after a failure opens a new connection."""

    def __init__(
        self,
        url: str,
        prefix: str,
        connection_name: str,
        timeout_s: float,
        *,
        infixes: tuple[str, str],
    ) -> None:
        """``infixes``: the name parts of the work and delay queues, ``("q", "d")``
        (store-backed) or ``("m", "md")`` (store-less: the two forms' messages are not
        interchangeable, so they must not meet)."""
        self._url = url
        self._work_infix, self._delay_infix = infixes
        self.prefix = prefix
        self.connection_name = connection_name
        self._timeout_s = timeout_s
        self._conn: AbstractConnection | None = None
        self._pub: AbstractChannel | None = None
        self._declared: dict[str, AbstractQueue] = {}
        self._seen: set[str] = set()  # every queue declared, across reconnects
        # Awaited with the offload queue whose work or delay queues were gone when a later
        # connection first used it, before they are declared again (see _missing); None: the
        # loss is logged as an error.
        self.on_lost: Callable[[str], Awaitable[None]] | None = None
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
        self._pub, self._declared, self._notes = None, {}, None
        if conn is not None:
            with contextlib.suppress(*ENGINE_ERRORS):
                await conn.close()

    async def close(self) -> None:
        """Close the connection (which returns every message still unacked)."""
        async with self._lock:
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
            gone = await self._missing(queue)
            if gone:
                await self._lost(queue, gone)  # (raises, undeclared: the next use asks again)
            args: dict[str, Any] = {"x-max-priority": MAX_PRIORITY}
            found = await pub.declare_queue(name, durable=True, arguments=args)
            self._declared[name] = found
            self._seen.add(name)
        return found

    async def _dead_queue(self, queue: str, pub: AbstractChannel) -> str:
        name = self.dead_name(queue)
        if name not in self._declared:
            if name in self._seen and await self._gone([name]):  # (after a reconnect only)
                log.error("RabbitMQ queue %s was gone: the dead jobs it held are lost", name)
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

    async def _missing(self, queue: str) -> list[str]:
        """Those of the work and delay queues of ``queue`` that this instance declared on an
        earlier connection and that are gone: deleted, or lost with their messages by the
        broker (RabbitMQ can lose a durable queue declared moments before it was killed: its
        metadata store writes behind). Asked the first time a connection uses the work queue,
        which every publish and consume does first: after a reconnect only."""
        delays = f"{self.prefix}.{self._delay_infix}.{queue}"
        names = [self.work_name(queue)]
        names += sorted(n for n in self._seen if n.rpartition(".")[0] == delays)
        return await self._gone([n for n in names if n in self._seen])

    async def _gone(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` the broker does not have (a passive declare each, on channels of
        their own: a passive declare of a missing queue closes its channel)."""
        gone: list[str] = []
        if not names or self._conn is None:
            return gone
        channels: list[AbstractChannel] = []
        try:
            for name in names:
                if not channels or channels[-1].is_closed:
                    channels.append(await self._conn.channel(publisher_confirms=False))
                try:
                    await channels[-1].declare_queue(name, passive=True, timeout=self._timeout_s)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    gone.append(name)
        finally:
            for channel in channels:
                with contextlib.suppress(*ENGINE_ERRORS):
                    await channel.close()
        return gone

    async def _lost(self, queue: str, gone: Sequence[str]) -> None:
        if self.on_lost is None:
            log.error("RabbitMQ queues gone: %s; the jobs in them are lost", ", ".join(gone))
            return
        log.warning("RabbitMQ queues gone (deleted, or lost in a crash): %s", ", ".join(gone))
        await self.on_lost(queue)

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
