"""What both ``beanstalk://`` forms do with Beanstalkd: put jobs, reserve them, settle them,
and wait for work.

Three connections per backend instance, each opened when first needed and again after a loss:

* the **producer** puts (``use`` + ``put``, a whole batch in one round trip);
* the **consumer** reserves (``reserve-with-timeout 0``, as many as the free slots, in one
  round trip) and settles what it reserved (``delete``, ``release``, ``bury``, ``touch``):
  Beanstalkd ties a reservation to the connection that made it, and releases every job of a
  connection that closes, which is how a killed worker's jobs come back at once;
* the **waiter** blocks in ``reserve-with-timeout`` while a worker waits for work and releases
  at once what it reserved: Beanstalkd has no notification other than handing out a job, and
  a reservation on the consumer would stall its touches and deletes behind the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from offload.backends.beanstalkd import protocol
from offload.backends.beanstalkd.options import BeanstalkOptions, delay_of, tube_of
from offload.backends.beanstalkd.protocol import BeanstalkError, Connection
from offload.errors import BackendUnavailable

WAIT_ROUND_S = 5  # longest blocking reserve of the waiter (whole seconds; a wait may be shorter)


@dataclass(frozen=True)
class Outgoing:
    """One job to put: its tube's queue, body, Beanstalkd priority and delay (seconds)."""

    queue: str
    body: bytes
    pri: int
    delay_s: float


@dataclass(frozen=True)
class Delivery:
    """One reserved job: the connection holding the reservation, its Beanstalkd id, body
    (which names the job's queue: a reserve from several tubes does not say which)."""

    conn: Connection
    bid: int
    body: bytes


class Beanstalk:
    """The Beanstalkd side of one backend instance (see the module docstring)."""

    def __init__(self, opts: BeanstalkOptions, form: str) -> None:
        self.opts = opts
        self.form = form  # options.STORED or options.CARRIED: which tubes this form uses
        self._producer: Connection | None = None
        self._consumer: Connection | None = None
        self._waiter: Connection | None = None
        self._round: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self.wake = asyncio.Event()  # set by this instance's enqueues: its waits return
        self.tubes: set[str] = set()  # tubes this instance used or watched (for cleanup)

    def tube(self, queue: str) -> str:
        return tube_of(self.opts.prefix, queue, self.form)

    async def _connect(self, which: str) -> Connection:
        async with self._connecting:
            conn: Connection | None = getattr(self, which)
            if conn is None or not conn.alive:
                if conn is not None:
                    await conn.close()
                try:
                    conn = await Connection.open(
                        self.opts.host, self.opts.port, self.opts.timeout_s
                    )
                except BeanstalkError as exc:
                    raise BackendUnavailable(str(exc)) from exc
                setattr(self, which, conn)
            return conn

    async def ensure(self) -> None:
        """Connect the producer now (an unreachable server fails ``open``)."""
        await self._connect("_producer")

    async def close(self) -> None:
        if self._round is not None:
            self._round.cancel()
            with contextlib.suppress(asyncio.CancelledError, BaseException):
                await self._round
            self._round = None
        for which in ("_producer", "_consumer", "_waiter"):
            conn: Connection | None = getattr(self, which)
            setattr(self, which, None)
            if conn is not None:
                await conn.close()

    # -- producing -------------------------------------------------------------------------

    async def put(self, items: Sequence[Outgoing]) -> list[int]:
        """Put every item (one round trip) and return their Beanstalkd ids; BackendUnavailable
        if any put failed (some may have been put: at-least-once)."""
        if not items:
            return []
        conn = await self._connect("_producer")
        commands: list[bytes] = []
        puts: list[int] = []
        for item in items:
            tube = self.tube(item.queue)
            if conn.used != tube:
                commands.append(protocol.use(tube))
                conn.used = tube
                self.tubes.add(tube)
            puts.append(len(commands))
            commands.append(
                protocol.put(item.body, item.pri, delay_of(item.delay_s), self.opts.ttr_s)
            )
        try:
            replies = await conn.call(commands)
            return [int(replies[i].expect(b"INSERTED").args[0]) for i in puts]
        except BeanstalkError as exc:
            conn.used = ""  # unknown after a failure: the next batch says ``use`` again
            raise BackendUnavailable(f"beanstalkd put failed: {exc}") from exc

    # -- consuming -------------------------------------------------------------------------

    async def reserve(self, queues: Sequence[str], n: int) -> tuple[list[Delivery], bool]:
        """Reserve up to ``n`` ready jobs of ``queues`` (one round trip, no waiting); also say
        whether Beanstalkd answered DEADLINE_SOON (a job this connection holds nears its
        time-to-run: touch what is held, then reserve again)."""
        if n <= 0 or not queues:
            return [], False
        conn = await self._connect("_consumer")
        by_tube = {self.tube(q) for q in queues}
        commands = [protocol.watch(t) for t in by_tube if t not in conn.watched]
        commands += [protocol.ignore(t) for t in conn.watched if t not in by_tube]
        conn.watched = set(by_tube)
        self.tubes.update(by_tube)
        first = len(commands)
        commands += [protocol.reserve(0)] * n
        try:
            replies = await conn.call(commands)
        except BeanstalkError as exc:
            raise BackendUnavailable(f"beanstalkd reserve failed: {exc}") from exc
        out: list[Delivery] = []
        soon = False
        for reply in replies[first:]:
            if reply.status == b"RESERVED":
                out.append(Delivery(conn, int(reply.args[0]), reply.body or b""))
            soon = soon or reply.status == b"DEADLINE_SOON"
        return out, soon

    async def settle(self, commands: Sequence[tuple[Delivery, bytes]]) -> None:
        """Send each command about a reservation on the connection that holds it. A connection
        since lost has released its jobs already (NOT_FOUND and lost connections are no
        error: the job is back in its tube either way)."""
        by_conn: dict[Connection, list[bytes]] = {}
        for d, cmd in commands:
            if d.conn.alive:
                by_conn.setdefault(d.conn, []).append(cmd)
        for conn, cmds in by_conn.items():
            with contextlib.suppress(BeanstalkError):
                await conn.call(cmds)

    # -- waiting ---------------------------------------------------------------------------

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        """Return when a job of ``queues`` is ready (the waiter reserved and released one),
        when this instance enqueued, or at ``timeout_s``. The waiter's blocking reserve goes
        on after an early return and serves the next wait."""
        if self.wake.is_set() or not queues:
            if not queues:
                await asyncio.sleep(timeout_s)
            return
        tubes = {self.tube(q) for q in queues}
        round_ = self._round
        if round_ is not None and (round_.done() or self._waiter_tubes() != tubes):
            if not round_.done():
                round_.cancel()  # its reservation, if any, is released with the connection
                await self._drop_waiter()
            self._round = round_ = None
        if round_ is None:
            self._round = round_ = asyncio.create_task(
                self._wait_round(tubes, min(WAIT_ROUND_S, max(1, math.ceil(timeout_s)))),
                name="offload-beanstalk-wait",
            )
            round_.add_done_callback(_retrieve)  # a round that fails after its wait ended
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait([round_, woken], timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            woken.cancel()
        if round_.done() and not round_.cancelled() and round_.exception() is not None:
            self._round = None
            await self._drop_waiter()

    def _waiter_tubes(self) -> set[str]:
        return set() if self._waiter is None else self._waiter.watched

    async def _drop_waiter(self) -> None:
        conn, self._waiter = self._waiter, None
        if conn is not None:
            await conn.close()

    async def _wait_round(self, tubes: set[str], timeout_s: int) -> None:
        conn = await self._connect("_waiter")
        commands = [protocol.watch(t) for t in tubes if t not in conn.watched]
        commands += [protocol.ignore(t) for t in conn.watched if t not in tubes]
        conn.watched = set(tubes)
        try:
            replies = await conn.call([*commands, protocol.reserve(timeout_s)], timeout_s + 5)
            reply = replies[-1]
            if reply.status == b"RESERVED":
                bid = int(reply.args[0])
                stats = await conn.stats_job(bid)
                pri = int((stats or {}).get("pri", 0))
                await conn.call([protocol.job_command(b"release", bid, pri, 0)])
        except BeanstalkError as exc:
            raise BackendUnavailable(str(exc)) from exc

    # -- tests and tools -------------------------------------------------------------------

    async def delete_tubes(self, tubes: Sequence[str]) -> None:
        """Delete every job of these tubes (ready, delayed, buried); an empty tube that nobody
        watches disappears on its own. For tests and teardown tools."""
        conn = await self._connect("_producer")
        try:
            for tube in tubes:
                await conn.call([protocol.use(tube)])
                conn.used = tube
                for what in (b"peek-ready", b"peek-delayed", b"peek-buried"):
                    while True:
                        (reply,) = await conn.call([protocol.peek(what)])
                        if reply.status != b"FOUND":
                            break
                        await conn.call([protocol.job_command(b"delete", int(reply.args[0]))])
        except BeanstalkError as exc:
            raise BackendUnavailable(str(exc)) from exc


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a finished wait round's exception as seen (the next wait reconnects)."""
    if not task.cancelled():
        task.exception()
