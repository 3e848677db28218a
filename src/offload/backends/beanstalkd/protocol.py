"""Beanstalkd's text protocol on an asyncio transport: the few commands offload needs.

One :class:`Connection` is one TCP connection, **pipelined**: a command is written at once
and its reply is matched to it in order as bytes arrive (an :class:`asyncio.Protocol`, no
reader task), so a batch of commands costs one round trip and concurrent callers never wait
for each other's replies. A caller that is cancelled leaves its reply to be discarded; a job
reserved for a cancelled ``reserve`` is released again (it would otherwise stay reserved until
its time-to-run ran out).

Commands that change the connection's state (``use``, ``watch``, ``ignore``) must be written
together with the commands that depend on it: :meth:`Connection.send` writes a whole list in
one go, with no await between them, so another caller cannot interleave.

Errors: a lost or refused connection raises :class:`BeanstalkError` (the backend translates
it); a reply the command does not expect raises it too, with the server's word.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence

# Replies followed by a data block of <bytes> (the last number of the line) and CRLF.
_WITH_DATA = frozenset({b"RESERVED", b"FOUND", b"OK"})
MAX_LINE = 64 * 1024  # replies are short lines; a data block is read by its announced size
WATCHDOG_S = 0.5  # how often a connection checks that its oldest reply is not overdue


class BeanstalkError(Exception):
    """The server is unreachable, the connection was lost, or a reply was not understood."""


class Reply:
    """One reply: its status word, the numbers or words after it, and its data block if any."""

    __slots__ = ("args", "body", "status")

    def __init__(self, status: bytes, args: list[bytes], body: bytes | None) -> None:
        self.status = status
        self.args = args
        self.body = body

    def expect(self, *statuses: bytes) -> Reply:
        if self.status not in statuses:
            raise BeanstalkError(f"beanstalkd answered {self.status.decode(errors='replace')}")
        return self


class _Replies(asyncio.Protocol):
    """Parses replies as bytes arrive and resolves the oldest waiting future with each: no
    reader task between the socket and the caller (one loop iteration less per reply than
    asyncio streams with a reader task, which halved the rate of one-at-a-time commands)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if len(buf) - pos > MAX_LINE:
                        raise ValueError("reply line too long")
                    break
                words = bytes(buf[pos:eol]).split(b" ")
                body = None
                end = eol + 2
                if words[0] in _WITH_DATA:
                    end = eol + 2 + int(words[-1]) + 2
                    if len(buf) < end:
                        break
                    body = bytes(buf[eol + 2 : end - 2])
                pos = end
                self._conn._replied(Reply(words[0], words[1:], body))
        except (ValueError, IndexError) as exc:
            self._conn._fail(BeanstalkError(f"beanstalkd reply not understood: {exc!r}"))
            self._conn._transport.close()
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn._fail(BeanstalkError(f"connection to beanstalkd lost: {exc!r}"))


class Connection:
    """One pipelined connection to beanstalkd (see the module docstring)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._transport: asyncio.Transport
        # (reply future, command word, deadline on the loop's clock), oldest first
        self._waiting: collections.deque[tuple[asyncio.Future[Reply], bytes, float]] = (
            collections.deque()
        )
        self._error: BeanstalkError | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.used = "default"  # the tube ``put`` goes to, as written so far
        self.watched: set[str] = {"default"}  # the tubes ``reserve`` takes from, as written

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float) -> Connection:
        conn = cls(timeout_s)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                transport, _ = await loop.create_connection(lambda: _Replies(conn), host, port)
        except (OSError, TimeoutError) as exc:
            raise BeanstalkError(f"cannot connect to beanstalkd at {host}:{port}: {exc}") from exc
        assert isinstance(transport, asyncio.Transport)
        conn._transport = transport
        conn._watch()
        return conn

    def _watch(self) -> None:
        """Every WATCHDOG_S: fail the connection if its oldest reply is overdue. One timer per
        connection, not one per command (a timer per call cost a fifth of a command's time)."""
        loop = asyncio.get_running_loop()
        if self._waiting and self._waiting[0][2] < loop.time():
            self._timed_out()
            return
        if self._error is None:
            self._watchdog = loop.call_later(WATCHDOG_S, self._watch)

    @property
    def alive(self) -> bool:
        return self._error is None

    async def close(self) -> None:
        """Close the connection; the server releases every job it had reserved. Idempotent."""
        self._fail(BeanstalkError("connection closed"))
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._transport.close()
        await asyncio.sleep(0)  # (the transport closes its socket at the next iteration)

    def send(
        self, commands: Sequence[bytes], timeout_s: float | None = None
    ) -> list[asyncio.Future[Reply]]:
        """Write ``commands`` (each a full command, CRLF and data included) in one go and
        return the future of each reply, in order. A reply that does not come within
        ``timeout_s`` (the connection's RPC timeout unless given) fails the connection.
        Raises BeanstalkError if the connection is lost already."""
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout_s if timeout_s is None else timeout_s)
        futures = []
        for cmd in commands:
            fut: asyncio.Future[Reply] = loop.create_future()
            self._waiting.append((fut, cmd[:7], deadline))
            futures.append(fut)
        self._transport.write(b"".join(commands))
        return futures

    async def call(self, commands: Sequence[bytes], timeout_s: float | None = None) -> list[Reply]:
        """Send ``commands`` and wait for all their replies (see :meth:`send`).

        A caller that gives up (cancelled, or a reply failed) gives up every reply: those
        still to come are cancelled (a reservation among them is released when it arrives),
        and reservations that came already are released now, never left held."""
        futures = self.send(commands, timeout_s)
        try:
            return [await fut for fut in futures]
        except BaseException:
            for fut in futures:
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled() and fut.exception() is None:
                    reply = fut.result()
                    if reply.status == b"RESERVED":
                        self._release_orphan(int(reply.args[0]))
            raise

    def _timed_out(self) -> None:
        self._fail(BeanstalkError("beanstalkd did not answer in time"))
        self._transport.close()

    def _replied(self, reply: Reply) -> None:
        if not self._waiting:
            raise ValueError("a reply nobody asked for")
        fut, command, _ = self._waiting.popleft()
        if not fut.done():
            fut.set_result(reply)
        elif command == b"reserve" and reply.status == b"RESERVED":
            self._release_orphan(int(reply.args[0]))

    def _release_orphan(self, job_id: int) -> None:
        """A job reserved for a caller that gave up: give it back at its own priority."""

        async def release() -> None:
            with contextlib.suppress(BeanstalkError):
                stats = await self.stats_job(job_id)
                if stats is not None:
                    await self.call([b"release %d %d 0\r\n" % (job_id, int(stats["pri"]))])

        task = asyncio.get_running_loop().create_task(release(), name="offload-beanstalk-orphan")
        self._tasks.add(task)  # (the loop keeps only a weak reference to a task)
        task.add_done_callback(self._tasks.discard)

    def _fail(self, error: BeanstalkError) -> None:
        if self._error is None:
            self._error = error
        while self._waiting:
            fut, _, _ = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(self._error)
                fut.exception()  # (retrieved: a cancelled caller never will)

    # -- commands --------------------------------------------------------------------------

    async def stats_job(self, job_id: int) -> dict[str, str] | None:
        """The job's ``stats-job`` (``pri``, ``reserves``, ``releases``, ...), None if gone."""
        (reply,) = await self.call([b"stats-job %d\r\n" % job_id])
        if reply.expect(b"OK", b"NOT_FOUND").status == b"NOT_FOUND":
            return None
        return parse_stats(reply.body or b"")

    async def stats_tube(self, tube: str) -> dict[str, str] | None:
        """The tube's ``stats-tube`` (``current-jobs-ready``, ...), None if it does not exist."""
        (reply,) = await self.call([b"stats-tube %s\r\n" % tube.encode()])
        if reply.expect(b"OK", b"NOT_FOUND").status == b"NOT_FOUND":
            return None
        return parse_stats(reply.body or b"")

    async def list_tubes(self) -> list[str]:
        (reply,) = await self.call([b"list-tubes\r\n"])
        return [line[2:] for line in parse_lines(reply.expect(b"OK").body or b"")]


# -- command encoders (each a full command line, with its data block for put) ----------------


def put(body: bytes, pri: int, delay_s: int, ttr_s: int) -> bytes:
    return b"put %d %d %d %d\r\n%b\r\n" % (pri, delay_s, ttr_s, len(body), body)


def use(tube: str) -> bytes:
    return b"use %s\r\n" % tube.encode()


def watch(tube: str) -> bytes:
    return b"watch %s\r\n" % tube.encode()


def ignore(tube: str) -> bytes:
    return b"ignore %s\r\n" % tube.encode()


def reserve(timeout_s: int) -> bytes:
    return b"reserve-with-timeout %d\r\n" % timeout_s


def job_command(verb: bytes, job_id: int, *numbers: int) -> bytes:
    """``delete``, ``touch``, ``kick-job`` (no numbers), ``release`` (pri, delay), ``bury``
    (pri)."""
    return b" ".join([verb, b"%d" % job_id, *(b"%d" % n for n in numbers)]) + b"\r\n"


def peek(what: bytes) -> bytes:
    """``peek-ready``, ``peek-delayed`` or ``peek-buried`` of the used tube."""
    return what + b"\r\n"


def parse_stats(body: bytes) -> dict[str, str]:
    """The flat YAML dictionary beanstalkd's ``stats-*`` commands answer."""
    out: dict[str, str] = {}
    for line in body.decode(errors="replace").splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_lines(body: bytes) -> list[str]:
    """The YAML list of ``list-tubes``: ``- name`` lines."""
    return [line for line in body.decode(errors="replace").splitlines() if line.startswith("- ")]
