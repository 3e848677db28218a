"""The Beanstalkd text protocol client (offload.backends.beanstalkd.protocol) and the URL and
name mapping (options), against the local beanstalkd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from offload.backends.beanstalkd import protocol
from offload.backends.beanstalkd.options import (
    CARRIED,
    STORED,
    delay_of,
    parse_url,
    pri_of,
    tube_of,
)
from offload.backends.beanstalkd.protocol import BeanstalkError, Connection
from offload.errors import ConfigurationError
from tests.services import BEANSTALKD_HOST, BEANSTALKD_PORT, require_beanstalkd, unique_name


@pytest.fixture
async def conn() -> AsyncIterator[Connection]:
    require_beanstalkd()
    c = await Connection.open(BEANSTALKD_HOST, BEANSTALKD_PORT, 5)
    yield c
    await c.close()


@pytest.fixture
def tube() -> str:
    return unique_name("offload_p")


async def empty(conn: Connection, tube: str) -> None:
    await conn.call([protocol.use(tube)])
    for what in (b"peek-ready", b"peek-delayed", b"peek-buried"):
        while (r := (await conn.call([protocol.peek(what)]))[0]).status == b"FOUND":
            await conn.call([protocol.job_command(b"delete", int(r.args[0]))])


async def test_a_batch_is_one_write_and_replies_come_back_in_order(
    conn: Connection, tube: str
) -> None:
    bodies = [b"a", b"", b"with\r\ncrlf", bytes(range(256))]
    puts = [protocol.put(b, 0, 0, 30) for b in bodies]
    replies = await conn.call([protocol.use(tube), *puts])
    assert [r.status for r in replies] == [b"USING"] + [b"INSERTED"] * 4
    ids = [int(r.args[0]) for r in replies[1:]]
    assert ids == sorted(ids)
    got = await conn.call(
        [protocol.watch(tube), protocol.ignore("default"), *[protocol.reserve(0)] * 5]
    )
    assert [r.body for r in got[2:6]] == bodies  # binary bodies, CRLF inside, intact
    assert got[6].status == b"TIMED_OUT"
    await conn.call([protocol.job_command(b"delete", i) for i in ids])


async def test_concurrent_callers_get_their_own_replies(conn: Connection, tube: str) -> None:
    async def put(i: int) -> int:
        (r,) = await conn.call([protocol.put(b"%d" % i, 0, 0, 30)])
        return int(r.args[0])

    await conn.call([protocol.use(tube)])
    ids = await asyncio.gather(*(put(i) for i in range(50)))
    for i, bid in enumerate(ids):
        (peek,) = await conn.call([b"peek %d\r\n" % bid])
        assert peek.body == b"%d" % i
    await empty(conn, tube)


async def test_a_job_reserved_for_a_cancelled_caller_is_released(
    conn: Connection, tube: str
) -> None:
    await conn.call([protocol.watch(tube), protocol.ignore("default")])
    waiting = asyncio.ensure_future(conn.call([protocol.reserve(5)], 10))
    await asyncio.sleep(0.05)
    waiting.cancel()
    other = await Connection.open(BEANSTALKD_HOST, BEANSTALKD_PORT, 5)
    try:
        (_, put) = await other.call([protocol.use(tube), protocol.put(b"x", 7, 0, 30)])
        bid = int(put.args[0])
        for _ in range(100):  # the orphan release is a background task of ``conn``
            stats = await other.stats_job(bid)
            if stats and stats["state"] == "ready" and stats["reserves"] == "1":
                break
            await asyncio.sleep(0.01)
        assert stats is not None
        assert (stats["state"], stats["pri"], stats["releases"]) == ("ready", "7", "1")
    finally:
        await empty(other, tube)
        await other.close()


async def test_every_job_of_a_cancelled_batch_of_reserves_is_released(
    conn: Connection, tube: str
) -> None:
    """Cancelling a caller waiting on several reserves gives up all of them: the second
    reply (not the one awaited when the cancel came) must not stay reserved either."""
    await conn.call([protocol.watch(tube), protocol.ignore("default")])
    waiting = asyncio.ensure_future(conn.call([protocol.reserve(5), protocol.reserve(5)], 10))
    await asyncio.sleep(0.05)
    waiting.cancel()
    other = await Connection.open(BEANSTALKD_HOST, BEANSTALKD_PORT, 5)
    try:
        await other.call([protocol.use(tube)])
        puts = await other.call([protocol.put(b"a", 7, 0, 30), protocol.put(b"b", 7, 0, 30)])
        bids = [int(put.args[0]) for put in puts]
        states: list[tuple[str, str]] = []
        for _ in range(200):  # the releases are background tasks of ``conn``
            stats = [await other.stats_job(bid) for bid in bids]
            states = [(s["state"], s["reserves"]) if s else ("gone", "") for s in stats]
            if states == [("ready", "1"), ("ready", "1")]:
                break
            await asyncio.sleep(0.01)
        assert states == [("ready", "1"), ("ready", "1")]
    finally:
        await empty(other, tube)
        await other.close()


async def test_a_lost_connection_fails_pending_and_later_calls(conn: Connection) -> None:
    pending = asyncio.ensure_future(conn.call([protocol.reserve(5)], 10))
    await asyncio.sleep(0.05)
    await conn.close()
    with pytest.raises(BeanstalkError):
        await pending
    assert not conn.alive
    with pytest.raises(BeanstalkError):
        await conn.call([b"stats\r\n"])


async def test_an_unreachable_server_is_a_beanstalk_error() -> None:
    with pytest.raises(BeanstalkError, match="cannot connect"):
        await Connection.open("127.0.0.1", 1, 1)


async def test_stats_and_tubes(conn: Connection, tube: str) -> None:
    await conn.call([protocol.use(tube), protocol.put(b"x", 3, 100, 30)])
    stats = await conn.stats_tube(tube)
    assert stats is not None and stats["current-jobs-delayed"] == "1"
    assert tube in await conn.list_tubes()
    assert await conn.stats_tube(unique_name("none")) is None
    assert await conn.stats_job(2**40) is None
    await empty(conn, tube)


def test_reply_expect_names_the_server_word() -> None:
    with pytest.raises(BeanstalkError, match="JOB_TOO_BIG"):
        protocol.Reply(b"JOB_TOO_BIG", [], None).expect(b"INSERTED")


def test_names_priorities_and_delays() -> None:
    assert tube_of("app", "emails") == "app.q.emails"
    assert tube_of("app", "emails", CARRIED) == "app.m.emails"
    assert tube_of("app", "a:b $é", STORED) == "app.q.a$3Ab$20$24$C3$A9"
    with pytest.raises(ConfigurationError):
        tube_of("app", "x" * 300)
    assert [pri_of(p) for p in (9, 5, 0)] == [0, 4, 9]
    assert [delay_of(s) for s in (-1, 0, 0.3, 1.0, 2.9)] == [0, 0, 0, 1, 2]


def test_url_options() -> None:
    opts = parse_url("beanstalk://h:1234/?prefix=p&ttr_s=2.5&store=sqlite:///x.db", {})
    assert (opts.host, opts.port, opts.prefix, opts.ttr_s, opts.store) == (
        "h", 1234, "p", 3, "sqlite:///x.db",
    )  # fmt: skip
    assert parse_url("beanstalk://h/", {}).port == 11300
    for bad in ("?prefix=a%20b", "?timeout_s=-1", "?ttr_s=x", "?store=", "?other=1"):
        with pytest.raises(ConfigurationError):
            parse_url(f"beanstalk://h/{bad}", {})
