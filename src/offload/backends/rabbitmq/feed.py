"""Push delivery for the amqp:// backend: one ``basic.consume`` per work queue, into a buffer.

A :class:`Feed` consumes one work queue on its own channel with manual acks and a prefetch
equal to the free slots of the claim that started it; the broker pushes messages into an
in-memory buffer that claims take from. ``basic.get`` on the same channel is the fallback when
the buffer is empty: the broker answers a channel's methods in order, so once the get has been
answered every message pushed before it is in the buffer, and an empty answer means the queue
has no ready message at all (not merely none pushed yet).

A feed must not sit on messages other instances could run. It consumes only while its backend
claims or waits for work (plus a short linger), and the backend's sweeper stops a feed that is
idle or whose oldest buffered message waited too long: stopping cancels the consumer and hands
every buffered message back (``basic.nack`` with requeue). A message pushed after the stop
(already in flight) is handed back as it arrives.

How a message is handed back is the feed's ``returner``: ``basic.nack`` with requeue by
default; the store-less backend re-publishes a copy and acks the original instead, because a
requeued message comes back marked ``redelivered``, the only sign it has that a delivery may
have crashed its worker (:mod:`offload.backends.rabbitmq.direct`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiormq
import aiormq.abc

LINGER_S = 0.25  # a feed keeps consuming this long after its last claim or wait ends
HOLD_S = 0.25  # a buffered message not claimed within this makes an idle feed stop

# What a broken channel raises when a message is settled on it.
SETTLE_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    RuntimeError,  # aiormq.ChannelInvalidStateError: the channel is closed
)


@dataclass(eq=False)
class Delivery:
    """One message this instance holds unacked: settled on the channel it came on."""

    job_id: str
    queue: str
    channel: aiormq.abc.AbstractChannel
    tag: int
    priority: int
    generation: int
    feed: Feed | None = None  # the feed whose consumer it was pushed to (None: basic.get)
    consumer: str | None = None
    at: float = field(default_factory=time.monotonic)
    body: bytes = b""
    redelivered: bool = False  # the broker delivered this message before, unacknowledged


Returner = Callable[[Sequence[Delivery]], Awaitable[None]]


async def settle(acks: Sequence[Delivery], requeues: Sequence[Delivery], generation: int) -> None:
    """Ack ``acks`` and hand ``requeues`` back, feed by feed. A delivery of an older connection
    is skipped (the broker put it back when that connection died); a failed send is ignored for
    the same reason: the channel is gone and its messages with it."""
    feeds: dict[Feed, tuple[list[Delivery], list[Delivery]]] = {}
    for d in acks:
        if d.feed is not None:
            feeds.setdefault(d.feed, ([], []))[0].append(d)
    for d in requeues:
        if d.feed is not None:
            feeds.setdefault(d.feed, ([], []))[1].append(d)
    for feed, (ack, back) in feeds.items():
        await feed.settle(ack, back, current=feed.generation == generation)


class Feed:
    """The consumer of one work queue (see the module docstring)."""

    def __init__(
        self,
        queue: str,
        name: str,
        channel: aiormq.abc.AbstractChannel,
        generation: int,
        wake: asyncio.Event,
        timeout_s: float,
        returner: Returner | None = None,
    ) -> None:
        self.queue = queue
        self.name = name
        self.channel = channel
        self.generation = generation
        self._wake = wake
        self._timeout_s = timeout_s
        self._buffer: deque[Delivery] = deque()
        self._tag: str | None = None
        self._lock = asyncio.Lock()
        self._users = 0
        self._last_used = time.monotonic()
        self._prefetch = 0
        self._outstanding = 0  # pushed to the current consumer and not settled yet
        self._unsettled: set[int] = set()  # delivery tags taken on this channel, not settled
        self._returner = returner
        self._late: set[asyncio.Task[object]] = set()  # handing back messages pushed after a stop

    @property
    def consuming(self) -> bool:
        return self._tag is not None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def starved(self) -> bool:
        """The consumer's prefetch is used up: the broker pushes nothing until a settle."""
        return self._tag is not None and self._outstanding >= self._prefetch

    async def settle(
        self, acks: list[Delivery], requeues: list[Delivery], *, current: bool
    ) -> None:
        """Ack and requeue on this channel. Acks below the lowest tag still held or handed
        back here go out as one ``multiple`` ack: one frame for a whole batch of finished
        jobs. (A multiple ack over a tag nacked just after would ack it first, and the nack of
        an acked tag is a channel error: "unknown delivery tag".)"""
        for d in (*acks, *requeues):
            self._unsettled.discard(d.tag)
            if d.consumer is not None and d.consumer == self._tag:
                self._outstanding -= 1
        if not current:
            return
        tags = sorted(d.tag for d in acks)
        floor = min(
            self._unsettled | {d.tag for d in requeues}, default=tags[-1] + 1 if tags else 0
        )
        below = [t for t in tags if t < floor]
        with contextlib.suppress(*SETTLE_ERRORS):
            if below:
                await self.channel.basic_ack(below[-1], multiple=True, wait=False)
            for t in tags[len(below) :]:
                await self.channel.basic_ack(t, wait=False)
            for d in requeues:
                await self.channel.basic_nack(d.tag, requeue=True, wait=False)

    def use(self) -> None:
        """A claim or wait begins (the feed must not be stopped meanwhile)."""
        self._users += 1
        self._last_used = time.monotonic()

    def done(self) -> None:
        self._users -= 1
        self._last_used = time.monotonic()

    def idle(self, now: float) -> bool:
        """Nobody claims or waits, and the linger has passed or a message waited too long."""
        if self._users > 0 or self._tag is None:
            return False
        stale = bool(self._buffer) and now - self._buffer[0].at > HOLD_S
        return stale or now - self._last_used > LINGER_S

    async def start(self, prefetch: int) -> None:
        """Consume with ``prefetch`` unacked messages at most (idempotent while consuming)."""
        if self._tag is not None:
            return
        async with self._lock:
            if self._tag is not None:
                return
            await self.channel.basic_qos(prefetch_count=max(prefetch, 1), timeout=self._timeout_s)
            tag = f"offload.{uuid.uuid4().hex}"
            self._tag, self._prefetch, self._outstanding = tag, max(prefetch, 1), 0
            try:
                await self.channel.basic_consume(
                    self.name, self._on_message, no_ack=False, consumer_tag=tag,
                    timeout=self._timeout_s,
                )  # fmt: skip
            except BaseException:
                self._tag = None
                raise

    async def stop(self) -> None:
        """Stop consuming and hand every buffered message back."""
        async with self._lock:
            tag, self._tag = self._tag, None
            if tag is not None:
                with contextlib.suppress(*SETTLE_ERRORS, asyncio.TimeoutError):
                    await self.channel.basic_cancel(tag, timeout=self._timeout_s)
            back = list(self._buffer)
            self._buffer.clear()
            await self._hand_back(back)
            if self._late:  # before the connection may close under them
                await asyncio.gather(*self._late, return_exceptions=True)

    async def _hand_back(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        if self._returner is not None:
            await self._returner(deliveries)
        else:
            await settle([], deliveries, self.generation)

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        tag = message.delivery_tag
        if tag is None:
            return
        if self._tag is None:  # pushed before the cancel reached the broker
            self._unsettled.add(tag)
            me = asyncio.current_task()
            if me is not None:
                self._late.add(me)
            try:
                await self._hand_back([self._delivery(message, tag)])
            finally:
                self._late.discard(me)  # type: ignore[arg-type]
            return
        self._outstanding += 1
        self._unsettled.add(tag)
        self._buffer.append(self._delivery(message, tag, self._tag))
        self._wake.set()

    def _delivery(
        self, message: aiormq.abc.DeliveredMessage, tag: int, consumer: str | None = None
    ) -> Delivery:
        props = message.header.properties
        return Delivery(
            job_id=props.message_id or "",
            queue=self.queue,
            channel=self.channel,
            tag=tag,
            priority=props.priority or 0,
            generation=self.generation,
            feed=self,
            consumer=consumer,
            body=message.body,
            redelivered=bool(getattr(message.delivery, "redelivered", False)),
        )

    def take(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` buffered deliveries, oldest first."""
        out: list[Delivery] = []
        while self._buffer and len(out) < limit:
            out.append(self._buffer.popleft())
        return out

    def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Return deliveries taken but not used to the front of the buffer, in order."""
        self._buffer.extendleft(reversed(deliveries))

    async def get(self, limit: int) -> list[Delivery]:
        """``basic.get`` up to ``limit`` messages, stopping at the first empty answer. Pushed
        messages that arrive meanwhile land in the buffer (take them after)."""
        out: list[Delivery] = []
        while len(out) < limit:
            message = await self.channel.basic_get(self.name, timeout=self._timeout_s)
            tag = message.delivery_tag
            if not isinstance(message.delivery, aiormq.spec.Basic.GetOk) or tag is None:
                break
            self._unsettled.add(tag)
            out.append(self._delivery(message, tag))
        return out
