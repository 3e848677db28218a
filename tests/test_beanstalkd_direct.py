"""The store-less beanstalk:// backend on the local beanstalkd: delivery only, the job in its
body. Each test uses its own tube prefix and deletes its tubes' jobs afterwards."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import pytest

import offload
from offload.backends import from_url
from offload.backends.beanstalkd import protocol
from offload.backends.beanstalkd.direct import Carried, DirectBeanstalkBackend
from offload.backends.beanstalkd.options import CARRIED, tube_of
from offload.backends.beanstalkd.protocol import Connection
from offload.backends.common import LEASE_EXPIRED_ERROR
from offload.errors import CapabilityUnavailable, ConfigurationError
from offload.job import ClaimRequest, JobFilter, JobRecord, Lease, NewJob, new_job_id
from offload.outcome import Dead, RetryAt, Snoozed, Succeeded
from offload.worker import Worker, WorkerConfig
from tests.procs import kill_all, ledger_lines, start_worker, stop, wait_for
from tests.services import (
    BEANSTALKD_HOST,
    BEANSTALKD_PORT,
    BEANSTALKD_URL,
    require_beanstalkd,
    unique_name,
)

Make = Callable[[], Awaitable[DirectBeanstalkBackend]]


@pytest.fixture
def prefix() -> Iterator[str]:
    require_beanstalkd()
    name = unique_name("offload_d")
    yield name
    asyncio.run(empty_tubes(name))


async def raw() -> Connection:
    return await Connection.open(BEANSTALKD_HOST, BEANSTALKD_PORT, 10)


async def empty_tubes(prefix: str) -> None:
    """Delete every job of every tube under ``prefix``."""
    backend = from_url(f"{BEANSTALKD_URL}?prefix={prefix}")
    assert isinstance(backend, DirectBeanstalkBackend)
    await backend.open()
    conn = await raw()
    try:
        tubes = [t for t in await conn.list_tubes() if t.startswith(prefix + ".")]
        await backend.delete_tubes(tubes)
    finally:
        await conn.close()
        await backend.close()


@pytest.fixture
async def make(prefix: str) -> AsyncIterator[Make]:
    opened: list[DirectBeanstalkBackend] = []

    async def make() -> DirectBeanstalkBackend:
        backend = from_url(f"{BEANSTALKD_URL}?prefix={prefix}")
        assert isinstance(backend, DirectBeanstalkBackend)
        await backend.open()
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        await backend.close()


def job(queue: str = "q", **kw: object) -> NewJob:
    return NewJob(id=new_job_id(), task="t", queue=queue, args=b'{"x":1}', **kw)  # type: ignore[arg-type]


def req(limit: int, queue: str = "q", worker: str = "w") -> ClaimRequest:
    return ClaimRequest(queues=(queue,), limit=limit, worker_id=worker, lease_s=30.0)


async def claim_until(
    backend: DirectBeanstalkBackend, n: int, limit: int = 10, timeout_s: float = 15
) -> list[JobRecord]:
    out: list[JobRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += await backend.claim(req(limit - len(out)))
        if len(out) < n:
            await backend.wait_for_work(["q"], 0.2)
    return out


async def buried(prefix: str, queue: str = "q") -> list[bytes]:
    """Take (delete) every buried job of ``queue``'s tube; return their bodies."""
    conn = await raw()
    out: list[bytes] = []
    try:
        await conn.call([protocol.use(tube_of(prefix, queue, CARRIED))])
        while True:
            (reply,) = await conn.call([protocol.peek(b"peek-buried")])
            if reply.status != b"FOUND":
                return out
            out.append(reply.body or b"")
            await conn.call([protocol.job_command(b"delete", int(reply.args[0]))])
    finally:
        await conn.close()


async def tube_count(prefix: str, what: str, queue: str = "q") -> int:
    conn = await raw()
    try:
        stats = await conn.stats_tube(tube_of(prefix, queue, CARRIED))
    finally:
        await conn.close()
    return int((stats or {}).get(f"current-jobs-{what}", 0))


def test_from_url_without_a_store_is_the_store_less_backend() -> None:
    backend = from_url(f"{BEANSTALKD_URL}?prefix=p")
    assert isinstance(backend, DirectBeanstalkBackend)
    assert not backend.capabilities.inspect and not backend.capabilities.results
    with pytest.raises(ConfigurationError, match="empty"):
        from_url(f"{BEANSTALKD_URL}?store=")
    with pytest.raises(ConfigurationError, match="ttr_s"):
        from_url(f"{BEANSTALKD_URL}?ttr_s=0")
    with pytest.raises(ConfigurationError):
        from_url(f"{BEANSTALKD_URL}?nonsense=1")


async def test_inspection_says_how_to_add_a_store(make: Make) -> None:
    backend = await make()
    calls: list[Awaitable[object]] = [
        backend.get("x"),
        backend.list_jobs(JobFilter()),
        backend.counts(),
        backend.cancel("x"),
        backend.requeue("x"),
        backend.delete(["x"]),
        backend.set_paused("q", True),
        backend.paused_queues(),
        backend.workers(),
        backend.wait_done("x", 0.1),
        backend.set_progress([(Lease("x", "w", 1), b"0.5")]),
    ]
    for call in calls:
        with pytest.raises(CapabilityUnavailable, match=r"\?store="):
            await call


async def test_keys_and_depth_limits_are_refused_before_anything_is_put(
    make: Make, prefix: str
) -> None:
    backend = await make()
    with pytest.raises(CapabilityUnavailable, match="key"):
        await backend.enqueue([job(), job(key="k")])
    with pytest.raises(CapabilityUnavailable, match="depth"):
        await backend.enqueue([job()], limits={"q": 5})
    assert await tube_count(prefix, "ready") == 0


async def test_a_claim_runs_what_the_body_carries_by_priority(make: Make) -> None:
    backend = await make()
    low, high = await backend.enqueue([job(priority=1), job(priority=8, max_attempts=4)])
    got = await claim_until(backend, 2)
    assert [j.id for j in got] == [high.id, low.id]
    assert (got[0].task, got[0].args, got[0].attempt, got[0].max_attempts) == (
        "t", b'{"x":1}', 1, 4,
    )  # fmt: skip
    await backend.complete([(j.lease, Succeeded()) for j in got if j.lease])
    assert await backend.claim(req(10)) == []


async def test_retry_carries_the_attempt_and_error(make: Make) -> None:
    backend = await make()
    await backend.enqueue([job()])
    (first,) = await claim_until(backend, 1)
    assert first.lease is not None
    t0 = time.monotonic()
    await backend.complete([(first.lease, RetryAt(delay_s=0.3, error="boom"))])
    assert await backend.claim(req(10)) == []  # not yet: held here until due
    (second,) = await claim_until(backend, 1)
    assert time.monotonic() - t0 >= 0.29
    assert second.id == first.id and second.attempt == 2
    assert [(e.attempt, e.error) for e in second.errors] == [(1, "boom")]


async def test_snooze_gives_the_attempt_back(make: Make) -> None:
    backend = await make()
    await backend.enqueue([job()])
    (first,) = await claim_until(backend, 1)
    assert first.lease is not None
    await backend.complete([(first.lease, Snoozed(0.0))])
    (second,) = await claim_until(backend, 1)
    assert second.attempt == 1
    assert second.lease is not None
    await backend.complete([(second.lease, Snoozed(0.2))])
    (third,) = await claim_until(backend, 1)
    assert third.attempt == 1


async def test_dead_jobs_are_buried_with_their_error(make: Make, prefix: str) -> None:
    backend = await make()
    await backend.enqueue([job()])
    (got,) = await claim_until(backend, 1)
    assert got.lease is not None
    await backend.complete([(got.lease, Dead(error="ValueError: no"))])
    (body,) = await buried(prefix)
    carried = msgspec.json.decode(body, type=Carried)
    assert (carried.dead, carried.attempt) == ("ValueError: no", 1)
    assert carried.errors[-1].error == "ValueError: no"
    assert await tube_count(prefix, "ready") == 0


async def test_a_kicked_dead_job_runs_again_with_its_attempts_reset(
    make: Make, prefix: str
) -> None:
    backend = await make()
    await backend.enqueue([job(max_attempts=1)])
    (got,) = await claim_until(backend, 1)
    assert got.lease is not None
    await backend.complete([(got.lease, Dead(error="no"))])
    conn = await raw()
    try:
        await conn.call([protocol.use(tube_of(prefix, "q", CARRIED))])
        (peek,) = await conn.call([protocol.peek(b"peek-buried")])
        (kicked,) = await conn.call([protocol.job_command(b"kick-job", int(peek.args[0]))])
        assert kicked.status == b"KICKED"
    finally:
        await conn.close()
    (again,) = await claim_until(backend, 1)
    assert (again.id, again.attempt) == (got.id, 1)


async def test_a_job_whose_worker_dies_every_time_ends_up_dead(make: Make, prefix: str) -> None:
    """Each claimant's connection closes with the job reserved (as a kill does); Beanstalkd
    counts the reservation, and the next claim counts it as a lost attempt."""
    producer = await make()
    await producer.enqueue([job(max_attempts=2)])
    seen: list[int] = []
    for _ in range(2):
        victim = await make()
        (got,) = await claim_until(victim, 1)
        seen.append(got.attempt)
        await victim._bs.close()  # like a crash: no release, no delete
    assert seen == [1, 2]
    last = await make()
    assert await last.claim(req(10)) == []  # dead-lettered, not started
    (body,) = await buried(prefix)
    carried = msgspec.json.decode(body, type=Carried)
    assert carried.attempt == 2 and "attempts exhausted" in (carried.dead or "")
    assert [e.error for e in carried.errors] == [LEASE_EXPIRED_ERROR, LEASE_EXPIRED_ERROR]


async def test_reservations_handed_back_unstarted_do_not_count(make: Make) -> None:
    """The waiter's reserve-and-release and a graceful close's release are no attempts."""
    backend = await make()
    await backend.enqueue([job(delay_s=0.5)])
    (got,) = await claim_until(backend, 1)  # held early once, waited for, then started
    assert got.attempt == 1
    assert got.lease is not None
    await backend.complete([(got.lease, Snoozed(0.0))])
    other = await make()
    await other.wait_for_work(["q"], 2)  # reserves and releases it
    (again,) = await claim_until(other, 1)
    assert again.attempt == 1


async def test_a_lease_is_lost_with_its_connection(make: Make) -> None:
    backend = await make()
    await backend.enqueue([job()])
    (got,) = await claim_until(backend, 1)
    assert got.lease is not None
    assert await backend.heartbeat([got.lease], 30) == {got.id}
    consumer = backend._bs._consumer
    assert consumer is not None
    await consumer.close()
    assert await backend.heartbeat([got.lease], 30) == set()
    other = await make()
    (again,) = await claim_until(other, 1)
    assert (again.id, again.attempt) == (got.id, 2)
    assert again.errors[-1].error == LEASE_EXPIRED_ERROR


async def test_undecodable_bodies_are_buried_and_the_claim_goes_on(make: Make, prefix: str) -> None:
    backend = await make()
    conn = await raw()
    try:
        await conn.call(
            [protocol.use(tube_of(prefix, "q", CARRIED)), protocol.put(b"nonsense", 0, 0, 30)]
        )
    finally:
        await conn.close()
    (good,) = await backend.enqueue([job()])
    got = await claim_until(backend, 1)
    assert [j.id for j in got] == [good.id]
    assert await buried(prefix) == [b"nonsense"]


async def test_an_app_runs_tasks_and_result_says_a_store_is_needed(prefix: str) -> None:
    app = offload.App(f"{BEANSTALKD_URL}?prefix={prefix}")
    ran: collections.Counter[int] = collections.Counter()
    done = asyncio.Event()
    n = 300

    @app.task(name="count", max_attempts=3, retry=offload.FixedBackoff(0.01))
    async def count(i: int) -> int:
        ran[i] += 1
        if i % 10 == 0 and ran[i] == 1:
            raise RuntimeError("first try fails")
        if sum(1 for k in ran if ran[k] >= (2 if k % 10 == 0 else 1)) == n:
            done.set()
        return i

    async with app:
        jobs = await app.aenqueue_many([count.prepare(i) for i in range(n)])
        with pytest.raises(CapabilityUnavailable, match=r"\?store="):
            await jobs[0].aresult(timeout=1)
        worker = Worker(app, WorkerConfig(concurrency=20, poll_s=0.1))
        run = asyncio.create_task(worker.run())
        await asyncio.wait_for(done.wait(), 30)
        await worker.stop()
        await run
    assert set(ran) == set(range(n))
    assert all(ran[i] == (2 if i % 10 == 0 else 1) for i in range(n))


def test_kill9_mid_run_loses_nothing_without_a_store(prefix: str, tmp_path: Path) -> None:
    """kill -9 store-less: the ledger and the tube are the only witnesses. Done when every job
    started and the tube holds nothing (all deleted), nothing buried."""
    url = f"{BEANSTALKD_URL}?prefix={prefix}"
    ledger = tmp_path / "ledger.txt"
    n, concurrency = 1000, 20
    app = offload.App(url)

    @app.task(name="record", max_attempts=5)
    def record(i: int, ledger: str, sleep_s: float = 0.0) -> int:
        return i

    app.enqueue_many([record.prepare(i, str(ledger), 0.002) for i in range(n)])
    app.close_sync()
    flags = ["--concurrency", str(concurrency)]
    first = start_worker(url, *flags)
    second = None

    def left() -> int:
        return sum(
            asyncio.run(tube_count(prefix, w, "default")) for w in ("ready", "reserved", "delayed")
        )

    try:
        wait_for(lambda: len(ledger_lines(ledger)) >= n // 3, 60, "a third of the jobs")
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = start_worker(url, *flags)

        def all_done() -> bool:
            started = {line.split()[0] for line in ledger_lines(ledger)}
            return len(started) >= n and left() == 0

        wait_for(all_done, 90, "every job to run after the kill")
        assert stop(second) == 0
    finally:
        kill_all([p for p in (first, second) if p is not None])
    assert left() == 0
    assert asyncio.run(tube_count(prefix, "buried", "default")) == 0
    starts = collections.Counter(line.split()[0] for line in ledger_lines(ledger))
    duplicates = sum(k - 1 for k in starts.values())
    print(f"\nlost={n - len(starts)} duplicated={duplicates} (killed worker held up to 20)")
    assert set(starts) == {str(i) for i in range(n)}
    # Only what the killed worker was running, and what it had finished but not yet deleted:
    # a slot frees when its job ends, before the Completer's next write (one batch).
    assert duplicates <= 2 * concurrency


async def test_a_completion_retried_after_a_failed_put_still_settles(
    make: Make, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's completer retries a completion whose write failed. A put that fails
    (the producer connection lost) must leave the batch's leases held, so the retry deletes
    the succeeded job's reservation instead of skipping it as done (it would run again)."""
    from offload.errors import BackendUnavailable

    b = await make()
    retried, done = job(), job()
    await b.enqueue([retried, done])
    held = {r.id: r for r in await claim_until(b, 2)}
    results = [
        (held[retried.id].lease, RetryAt(delay_s=0, error="again")),
        (held[done.id].lease, Succeeded(b"1")),
    ]
    real_put = b._bs.put

    async def failing_put(*args: object, **kw: object) -> None:
        raise BackendUnavailable("producer connection lost")

    monkeypatch.setattr(b._bs, "put", failing_put)
    with pytest.raises(BackendUnavailable):
        await b.complete(results)  # type: ignore[arg-type]
    monkeypatch.setattr(b._bs, "put", real_put)
    await b.complete(results)  # type: ignore[arg-type]
    assert await tube_count(prefix, "reserved") == 0  # none left held
    (again,) = await claim_until(b, 1)
    assert (again.id, again.attempt) == (retried.id, 2)


async def test_headers_travel_in_the_message(make: Make) -> None:
    backend = await make()
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    plain, tagged = await backend.enqueue([job(), job(headers=headers)])
    assert (plain.headers, tagged.headers) == ({}, headers)
    got = {r.id: r.headers for r in await claim_until(backend, 2)}
    assert got == {plain.id: {}, tagged.id: headers}
