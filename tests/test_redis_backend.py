"""The redis:// backend: the conformance suite plus its own guarantees (URL options, key
layout, retention, outages, connection kills). Each test works under a key prefix of its own
and deletes only the keys under it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import offload
from offload.backends import from_url
from offload.backends.base import Backend
from offload.backends.common import LEASE_EXPIRED_ERROR
from offload.backends.redis import RedisBackend
from offload.backends.retention import Retention
from offload.errors import BackendUnavailable, ConfigurationError
from offload.job import ClaimRequest, JobFilter, JobState, NewJob, WorkerInfo, new_job_id
from offload.outcome import RetryAt, Snoozed, Succeeded
from offload.testing import BackendConformance, MakeBackend, lease_of
from offload.worker import Worker, WorkerConfig
from tests.services import (
    REDIS_HOST,
    REDIS_PORT,
    REDIS_URL,
    port_open,
    require_port,
    unavailable,
    unique_name,
)

Factory = Callable[..., Awaitable[RedisBackend]]


async def delete_prefix(prefix: str) -> None:
    """UNLINK every key of ``prefix`` (queue keys "{p:q}..." and global keys "{p}...")."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        for pattern in ("{" + prefix + ":*", "{" + prefix + "}*"):
            batch = [k async for k in client.scan_iter(match=pattern, count=1000)]
            for i in range(0, len(batch), 1000):
                await client.unlink(*batch[i : i + 1000])
    finally:
        await client.aclose()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    require_port("Redis", REDIS_HOST, REDIS_PORT)
    name = unique_name("offload_t")
    yield name
    await delete_prefix(name)


@pytest.fixture
async def backends(prefix: str) -> AsyncIterator[Factory]:
    opened: list[RedisBackend] = []

    async def make(**options: object) -> RedisBackend:
        backend = RedisBackend(f"{REDIS_URL}?prefix={prefix}", **options)
        await backend.open()
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        await backend.close()


class TestRedisConformance(BackendConformance):
    @pytest.fixture
    async def make_backend(self, backends: Factory) -> MakeBackend:
        async def make() -> Backend:
            return await backends()

        return make


def job(queue: str = "q", **kw: object) -> NewJob:
    return NewJob(id=new_job_id(), task="t", queue=queue, args=b'{"x": 1}', **kw)  # type: ignore[arg-type]


def claim(*queues: str, limit: int = 10, lease_s: float = 30.0) -> ClaimRequest:
    return ClaimRequest(queues=queues or ("q",), limit=limit, worker_id="w", lease_s=lease_s)


async def raw_client() -> aioredis.Redis:
    return aioredis.Redis.from_url(REDIS_URL)


# -- URL and layout ----------------------------------------------------------------------------


def test_url_options_are_stripped_and_the_password_masked() -> None:
    backend = from_url("redis://u:secret@db:6380/2?prefix=jobs&retention=60&timeout=2&db=2")
    assert isinstance(backend, RedisBackend)
    assert backend.url == "redis://u:***@db:6380/2?prefix=jobs&retention=60&timeout=2&db=2"
    assert (backend.prefix, backend.retention, backend.timeout_s) == (
        "jobs",
        Retention(60.0, 60.0, 60.0),
        2.0,
    )
    assert RedisBackend("rediss://db", prefix="p").prefix == "p"  # a keyword wins
    assert RedisBackend("redis://db").retention == Retention()  # the default: days
    for bad in ("redis://db?prefix=a{b}", "redis://db?retention=-1", "redis://db?timeout=x"):
        with pytest.raises(ConfigurationError):
            RedisBackend(bad)
    with pytest.raises(ConfigurationError):
        RedisBackend("redis://db", colour="blue")


async def test_every_key_sits_under_the_prefix_with_one_tag_per_queue(
    backends: Factory, prefix: str
) -> None:
    backend = await backends()
    await backend.enqueue([job("a", key="k"), job("b", delay_s=60), job("a")])
    (running,) = await backend.claim(claim("a", limit=1))
    await backend.complete([(lease_of(running), Succeeded(b"1"))])
    await backend.set_paused("b", True)
    await backend.report_worker(
        WorkerInfo(id="w", host="h", pid=1, queues=("a",), concurrency=1, busy=0, started_at=0),
        30.0,
    )
    client = await raw_client()
    try:
        keys = [k.decode() async for k in client.scan_iter(match="*" + prefix + "*")]
    finally:
        await client.aclose()
    tags = {"{" + prefix + "}", backend.base("a"), backend.base("b")}
    assert keys and all(k[: k.index("}") + 1] in tags for k in keys), keys
    assert {k[: k.index("}") + 1] for k in keys} == tags


# -- ordering and waiting ----------------------------------------------------------------------


async def test_one_claim_over_several_queues_takes_the_best_first(backends: Factory) -> None:
    backend = await backends()
    low_a, high_b, mid_a, low_b = await backend.enqueue(
        [job("a"), job("b", priority=9), job("a", priority=5), job("b")]
    )
    got = await backend.claim(claim("a", "b", limit=3))
    assert [j.id for j in got] == [high_b.id, mid_a.id, low_a.id]
    assert [j.id for j in await backend.claim(claim("b", "a"))] == [low_b.id]


async def test_a_claim_by_ids_takes_named_due_jobs_of_open_queues_best_first(
    backends: Factory,
) -> None:
    backend = await backends()
    low_a, high_b, other_a, in_paused = await backend.enqueue(
        [job("a"), job("b", priority=9), job("a", priority=5), job("c", priority=9)]
    )
    (soon,) = await backend.enqueue([job("d", delay_s=0.1)])
    await backend.set_paused("c", True)
    await backend.wait_for_work(["d"], 0.05)  # takes the enqueue's wake token
    await backend.wait_for_work(["d"], 5.0)  # returns once `soon` is due, still scheduled
    named = (soon.id, low_a.id, in_paused.id, high_b.id, low_a.id, new_job_id())
    req = ClaimRequest(queues=("a", "b", "c", "d"), limit=2, worker_id="w", job_ids=named)
    assert [j.id for j in await backend.claim(req)] == [high_b.id, low_a.id]
    assert [j.id for j in await backend.claim(req)] == [soon.id]  # due, from the schedule
    assert await backend.claim(req) == []  # a paused queue's job is not taken
    assert [j.id for j in await backend.claim(claim("a", "b"))] == [other_a.id]
    assert await backend.counts() == {
        "a": {JobState.RUNNING: 2},
        "b": {JobState.RUNNING: 1},
        "c": {JobState.QUEUED: 1},
        "d": {JobState.RUNNING: 1},
    }


async def test_a_retry_is_refused_only_by_an_active_key_of_its_own_queue(
    backends: Factory,
) -> None:
    backend = await backends()
    (old,) = await backend.enqueue([job("a", key="k")])
    await backend.cancel(old.id)
    (other,) = await backend.enqueue([job("b", key="k")])
    retried = await backend.requeue(old.id)  # "k" is active on queue b only
    assert retried is not None and retried.state is JobState.QUEUED
    (same,) = await backend.enqueue([job("a", key="k")])
    assert same.id == old.id
    client = await raw_client()
    try:  # one key index per queue, under the queue's hash tag
        assert await client.hget(f"{backend.base('a')}:keys", "k") == old.id.encode()
        assert await client.hget(f"{backend.base('b')}:keys", "k") == other.id.encode()
    finally:
        await client.aclose()


async def test_wait_for_work_returns_when_a_delayed_job_is_due(backends: Factory) -> None:
    backend = await backends()
    await backend.enqueue([job(delay_s=0.3)])
    await backend.wait_for_work(["q"], 0.05)  # takes the enqueue's (spurious) wake token
    started = time.monotonic()
    await backend.wait_for_work(["q"], 30.0)
    assert 0.1 < time.monotonic() - started < 2.0
    assert len(await backend.claim(claim())) == 1


async def test_wait_done_wakes_every_waiter(backends: Factory) -> None:
    worker, waiter = await backends(), await backends()
    (rec,) = await worker.enqueue([job()])
    (running,) = await worker.claim(claim())
    waits = [asyncio.create_task(waiter.wait_done(rec.id, 30.0)) for _ in range(3)]
    await asyncio.sleep(0.1)  # they must still be waiting after it: this sleep is the check
    assert not any(w.done() for w in waits), "a waiter returned before the job finished"
    await worker.complete([(lease_of(running), Succeeded(b"7"))])
    done = await asyncio.wait_for(asyncio.gather(*waits), 3.0)
    # Every waiter, each with the finished record (a None is a waiter that saw no job at all).
    assert [(d.state, d.result) if d else None for d in done] == [(JobState.SUCCEEDED, b"7")] * 3


async def blocked_in_blpop(prefix: str, blocked: bool = True, within_s: float = 10.0) -> None:
    """Return once a connection of ``prefix``'s backends is blocked in BLPOP on the server
    (with ``blocked`` False: once none is, the server having seen a closed one go)."""
    client = await raw_client()
    try:
        deadline = time.monotonic() + within_s
        while True:
            clients = await client.client_list()
            found = any(c["name"] == f"offload:{prefix}" and c["cmd"] == "blpop" for c in clients)
            if found == blocked:
                return
            state = "no connection of it is" if blocked else "a connection of it is still"
            assert time.monotonic() < deadline, f"{state} in BLPOP after {within_s} s"
            await asyncio.sleep(0.005)  # polls the server's client list, the only sign
    finally:
        await client.aclose()


async def test_a_woken_wait_brings_its_jobs_leased(backends: Factory, prefix: str) -> None:
    """The claim travels with the wait: what an enqueue wakes it for comes back leased, in
    the wake-up's round trip (not None, which would leave the claim to the caller)."""
    worker, producer = await backends(), await backends()
    waiting = asyncio.create_task(worker.wait_and_claim(claim(limit=5), 30.0))
    await blocked_in_blpop(prefix)
    recs = await producer.enqueue([job(), job()])
    got = await asyncio.wait_for(waiting, 3.0)
    assert got is not None
    assert sorted(r.id for r in got) == sorted(r.id for r in recs)
    assert {(await producer.get(r.id)).state for r in recs} == {JobState.RUNNING}  # type: ignore[union-attr]


async def test_a_wait_cancelled_in_blpop_leases_nothing(backends: Factory, prefix: str) -> None:
    """Cancelled while Redis holds it in BLPOP, the connection closes and Redis drops the
    claim queued behind the pop: a job enqueued after that stays queued for others."""
    worker, producer = await backends(), await backends()
    waiting = asyncio.create_task(worker.wait_and_claim(claim(), 30.0))
    await blocked_in_blpop(prefix)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await blocked_in_blpop(prefix, blocked=False)  # its close reached the server first
    (rec,) = await producer.enqueue([job()])
    # A claim left queued behind a pop still blocked would run as this enqueue wakes it,
    # before this read reaches the server.
    assert (await producer.get(rec.id)).state is JobState.QUEUED  # type: ignore[union-attr]
    (got,) = await producer.claim(claim())
    assert got.id == rec.id


async def test_a_wait_whose_scripts_were_flushed_leaves_the_claim_to_the_caller(
    backends: Factory, prefix: str
) -> None:
    """A server restarted or flushed while a worker waits has lost the scripts: the claim
    behind the pop fails with NOSCRIPT, the wait returns None, and a claim loads them."""
    worker, producer = await backends(), await backends()
    waiting = asyncio.create_task(worker.wait_and_claim(claim(), 30.0))
    await blocked_in_blpop(prefix)
    client = await raw_client()
    try:
        await client.script_flush()
        await client.rpush(f"{worker.base('q')}:wake", 1)  # a wake-up with no job behind it
    finally:
        await client.aclose()
    assert await asyncio.wait_for(waiting, 3.0) is None
    assert await worker.claim(claim()) == []  # loads the scripts again (NOSCRIPT): no job
    (rec,) = await producer.enqueue([job()])
    (got,) = await worker.claim(claim())
    assert got.id == rec.id


# -- untrusted data, retention -----------------------------------------------------------------


async def test_an_undecodable_job_is_buried_and_skipped(backends: Factory) -> None:
    backend = await backends()
    bad, good = await backend.enqueue([job(), job()])
    client = await raw_client()
    try:
        await client.hset(f"{backend.base('q')}:j:{bad.id}", "d", b"\xc1 not msgpack")
        assert [j.id for j in await backend.claim(claim())] == [good.id]
        assert await client.hget(f"{backend.base('q')}:j:{bad.id}", "s") == b"dead"
    finally:
        await client.aclose()
    assert await backend.get(bad.id) is None  # unreadable, so not listed either
    assert [j.id for j in (await backend.list_jobs(JobFilter())).jobs] == [good.id]


# -- recovery ------------------------------------------------------------------------------------


async def test_a_recovery_decision_is_ignored_once_its_lease_moved_on(backends: Factory) -> None:
    """Recovery finds expired leases, decides in Python, then writes: a job finished, claimed
    again (a new attempt, or another worker) or heartbeaten in between is left alone."""
    backend = await backends()
    finished, retried, snoozed, beaten, lost = await backend.enqueue([job() for _ in range(5)])

    def by(worker: str, lease_s: float = 0.0) -> ClaimRequest:
        return ClaimRequest(queues=("q",), limit=5, worker_id=worker, lease_s=lease_s)

    first = {j.id: j for j in await backend.claim(by("w1"))}  # leases expire at once
    fates = await backend._find_expired()
    assert len(fates["q"]) == 1 + 5 * 5  # the server's time, then all five decided

    await backend.complete([(lease_of(first[finished.id]), Succeeded())])
    await backend.complete([(lease_of(first[retried.id]), RetryAt(0.0, "boom"))])
    (again,) = await backend.claim(by("w1"))  # the same worker, attempt 2, expired again
    await backend.complete([(lease_of(first[snoozed.id]), Snoozed(0.0))])
    (other,) = await backend.claim(by("w2"))  # attempt 1 again, another worker, expired
    assert (again.id, again.attempt, other.id, other.attempt) == (retried.id, 2, snoozed.id, 1)
    assert await backend.heartbeat([lease_of(first[beaten.id])], 30.0) == {beaten.id}

    assert await backend._write_fates(fates) == 1
    jobs = {j.id: j for j in (await backend.list_jobs(JobFilter())).jobs}
    assert jobs[finished.id].state is JobState.SUCCEEDED
    assert (jobs[retried.id].state, jobs[retried.id].attempt) == (JobState.RUNNING, 2)
    assert [e.error for e in jobs[retried.id].errors] == ["boom"]
    assert (jobs[snoozed.id].worker_id, jobs[snoozed.id].errors) == ("w2", ())
    assert (jobs[beaten.id].state, jobs[beaten.id].errors) == (JobState.RUNNING, ())
    assert jobs[lost.id].state is JobState.QUEUED
    assert [e.error for e in jobs[lost.id].errors] == [LEASE_EXPIRED_ERROR]


async def test_run_maintenance_deletes_finished_jobs_past_retention(backends: Factory) -> None:
    keeper, sweeper = await backends(), await backends(retention=0.0)
    await keeper.enqueue([job() for _ in range(3)])
    jobs = await keeper.claim(claim())
    await keeper.complete([(lease_of(j), Succeeded()) for j in jobs[:2]])
    assert await keeper.run_maintenance() == 0  # the default retention: kept for days
    counts = await asyncio.gather(*(sweeper.run_maintenance() for _ in range(3)))
    assert sum(counts) == 2
    assert await keeper.counts() == {"q": {JobState.RUNNING: 1}}
    assert (await keeper.list_jobs(JobFilter())).jobs == [await keeper.get(jobs[2].id)]


# -- outages and cut connections ---------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start (and restart) a Redis server of this test's own, on a free port: the only way to
    take a server down without touching the one other tests share."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(tmp_path)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 5
        while not port_open("127.0.0.1", port, 0.1):
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.02)
        return proc

    start.port = port  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


async def test_an_outage_is_backend_unavailable_and_a_restart_is_survived(
    private_redis: Callable[[], subprocess.Popen[bytes]],
) -> None:
    server = private_redis()
    backend = RedisBackend(f"redis://127.0.0.1:{private_redis.port}/0")  # type: ignore[attr-defined]
    await backend.open()
    try:
        (before,) = await backend.enqueue([job()])
        server.kill()
        server.wait()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await backend.enqueue([job()])
        with pytest.raises(BackendUnavailable):
            await backend.claim(claim())
        assert time.monotonic() - started < 4.0  # bounded retries, never a hang
        private_redis()  # back, empty, and without our scripts: NOSCRIPT, reload, carry on
        (after,) = await backend.enqueue([job()])
        assert [j.id for j in await backend.claim(claim())] == [after.id]
        assert await backend.get(before.id) is None  # no persistence on this server
        assert await backend.known_queues() == ["q"]  # told again after the restart
    finally:
        await backend.close()


async def test_unreachable_server_fails_open_fast() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0?connect_timeout=0.5")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await backend.open()
    assert time.monotonic() - started < 4.0
    await backend.close()


async def kill_clients(name: str) -> int:
    """CLIENT KILL every connection named ``name``; how many were killed."""
    client = await raw_client()
    try:
        listing = await client.client_list()
        ids = [c["id"] for c in listing if c.get("name") == name]
        for client_id in ids:
            with contextlib.suppress(aioredis.ResponseError):
                await client.client_kill_filter(_id=client_id)
        return len(ids)
    finally:
        await client.aclose()


async def cut_repeatedly(name: str, done: asyncio.Event, every_s: float) -> int:
    cuts = 0
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), every_s)
        if not done.is_set() and await kill_clients(name):
            cuts += 1
    return cuts


async def watch_progress(progress: Callable[[], int], total: int, done: asyncio.Event) -> float:
    """Sample progress until it reaches ``total``; return the longest stall (seconds)."""
    last, last_change, longest = -1, time.monotonic(), 0.0
    while True:
        now, n = time.monotonic(), progress()
        if n != last:
            last, last_change = n, now
        longest = max(longest, now - last_change)
        if n >= total:
            done.set()
            return longest
        assert longest < 5.0, f"stalled for {longest:.1f}s at {n}/{total}"
        await asyncio.sleep(0.02)


async def test_claims_and_completions_survive_cut_connections(
    backends: Factory, prefix: str
) -> None:
    total = 5000
    producer = await backends()
    ids = {r.id for r in await producer.enqueue([job() for _ in range(total)])}
    finished: set[str] = set()
    done = asyncio.Event()

    async def consume(n: int) -> None:
        backend = await backends()
        while not done.is_set():
            try:
                await backend.recover()
                jobs = await backend.claim(claim(limit=5, lease_s=2.0))
                await backend.complete([(lease_of(j), Succeeded()) for j in jobs])
                finished.update(j.id for j in jobs)
                if not jobs:
                    await backend.wait_for_work(["q"], 0.2)
            except BackendUnavailable:
                await asyncio.sleep(0.05)

    consumers = [asyncio.create_task(consume(n)) for n in range(3)]
    cutter = asyncio.create_task(cut_repeatedly(f"offload:{prefix}", done, 0.1))
    stall = await watch_progress(lambda: len(finished & ids), total, done)
    await asyncio.gather(*consumers)
    cuts = await cutter
    assert cuts >= 3, cuts
    counts = await producer.counts()
    assert counts == {"q": {JobState.SUCCEEDED: total}}, (counts, stall)


async def test_a_worker_resumes_after_each_cut_and_loses_nothing(prefix: str) -> None:
    total = 6000
    app = offload.App(f"{REDIS_URL}?prefix={prefix}")
    ran: set[int] = set()

    @app.task
    async def record(i: int) -> None:
        ran.add(i)

    await app.open()
    config = WorkerConfig(
        concurrency=20, lease_s=3.0, heartbeat_s=1.0, poll_s=0.2, recover_s=0.5, grace_s=5.0
    )
    worker = Worker(app, config)
    running = asyncio.create_task(worker.run())
    done = asyncio.Event()
    try:
        await worker.started.wait()
        for start in range(0, total, 1000):
            await app.aenqueue_many([record.prepare(i) for i in range(start, start + 1000)])
        cutter = asyncio.create_task(cut_repeatedly(f"offload:{prefix}", done, 0.05))
        await watch_progress(lambda: len(ran), total, done)
        assert await cutter >= 3
    finally:
        done.set()
        await worker.stop()
        await running
    backend = app.backend
    deadline = time.monotonic() + 10  # the last outcomes may still be on their way
    while (await backend.counts()).get("default", {}).get(JobState.SUCCEEDED) != total:
        assert time.monotonic() < deadline, await backend.counts()
        await asyncio.sleep(0.05)
    await app.close()


def test_recovery_decisions_skip_a_damaged_job() -> None:
    """Stored data is untrusted: a running job whose hash lost its attempt count (or worker
    id) is skipped, never an error that stops every recovery pass for every queue."""
    from offload.backends.redis.codec import expired_argv

    reply = [b"1000000", b"j1", None, b"3", b"w", b"j2", b"1", b"3", b"w", b"j3", b"1", b"3", None]
    argv = expired_argv(reply)  # type: ignore[arg-type]
    assert argv[0] == 1_000_000
    assert argv[1:] == [b"j2", b"w", 1, "queued", "lease expired (worker lost)"]
