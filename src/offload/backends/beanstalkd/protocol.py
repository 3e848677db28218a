"""Beanstalkd's text protocol over asyncio streams: the few commands offload needs.

One :class:`Connection` is one TCP connection, **pipelined**: a command is written at once
and its reply is matched to it in order by one reader task, so a batch of commands costs one
round trip and concurrent callers never wait for each other's replies. A caller that is
cancelled leaves its reply to the reader, which discards it; a job reserved for a cancelled
``reserve`` is released again (it would otherwise stay reserved until its time-to-run ran out).

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


class Connection:
    """One pipelined connection to beanstalkd (see the module docstring)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.timeout_s = timeout_s
        self._waiting: collections.deque[tuple[asyncio.Future[Reply], bytes]] = collections.deque()
        self._error: BeanstalkError | None = None
        self._reading = asyncio.create_task(self._read_replies(), name="offload-beanstalk-read")
        self.used = "default"  # the tube ``put`` goes to, as written so far
        self.watched: set[str] = {"default"}  # the tubes ``reserve`` takes from, as written

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float) -> Connection:
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
        except (OSError, TimeoutError) as exc:
            raise BeanstalkError(f"cannot connect to beanstalkd at {host}:{port}: {exc}") from exc
        return cls(reader, writer, timeout_s)

    @property
    def alive(self) -> bool:
        return self._error is None

    async def close(self) -> None:
        """Close the connection; the server releases every job it had reserved. Idempotent."""
        self._fail(BeanstalkError("connection closed"))
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, BeanstalkError):
            await self._reading
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()

    def send(self, commands: Sequence[bytes]) -> list[asyncio.Future[Reply]]:
        """Write ``commands`` (each a full command, CRLF and data included) in one go and
        return the future of each reply, in order. Raises BeanstalkError if the connection
        is lost already."""
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        futures = []
        for cmd in commands:
            fut: asyncio.Future[Reply] = loop.create_future()
            self._waiting.append((fut, cmd.split(b" ", 1)[0]))
            futures.append(fut)
        self._writer.write(b"".join(commands))
        return futures

    async def call(self, commands: Sequence[bytes], timeout_s: float | None = None) -> list[Reply]:
        """Send ``commands`` and wait for all their replies (``timeout_s``: the connection's
        RPC timeout unless given; a reply that does not come in time fails the connection)."""
        futures = self.send(commands)
        try:
            async with asyncio.timeout(self.timeout_s if timeout_s is None else timeout_s):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            self._fail(BeanstalkError("beanstalkd did not answer in time"))
            self._writer.close()
            raise BeanstalkError("beanstalkd did not answer in time") from None

    async def _read_replies(self) -> None:
        try:
            while True:
                reply = await self._read_one()
                fut, command = self._waiting.popleft()
                if not fut.done():
                    fut.set_result(reply)
                elif command.startswith(b"reserve") and reply.status == b"RESERVED":
                    self._release_orphan(int(reply.args[0]))
        except (OSError, EOFError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            self._fail(BeanstalkError(f"connection to beanstalkd lost: {exc!r}"))

    async def _read_one(self) -> Reply:
        line = await self._reader.readuntil(b"\r\n")
        words = line[:-2].split(b" ")
        body = None
        if words[0] in _WITH_DATA:
            size = int(words[-1])
            body = (await self._reader.readexactly(size + 2))[:-2]
        return Reply(words[0], words[1:], body)

    def _release_orphan(self, job_id: int) -> None:
        """A job reserved for a caller that gave up: give it back at its own priority."""

        async def release() -> None:
            with contextlib.suppress(BeanstalkError):
                stats = await self.stats_job(job_id)
                if stats is not None:
                    await self.call([b"release %d %d 0\r\n" % (job_id, int(stats["pri"]))])

        asyncio.get_running_loop().create_task(release(), name="offload-beanstalk-orphan")

    def _fail(self, error: BeanstalkError) -> None:
        if self._error is None:
            self._error = error
        while self._waiting:
            fut, _ = self._waiting.popleft()
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
