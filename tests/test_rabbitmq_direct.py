"""The store-less amqp:// backend on the local RabbitMQ: delivery only, the job in its message.

Each test uses its own queue-name prefix and deletes what it declared under it afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aio_pika
import msgspec
import pytest
from reliability.app import make_app as make_harness_app

import offload
from offload.backends import from_url
from offload.backends.common import LEASE_EXPIRED_ERROR
from offload.backends.rabbitmq.delays import MAX_DELAY_MS, ms
from offload.backends.rabbitmq.direct import Carried, DirectRabbitMQBackend
from offload.errors import CapabilityUnavailable, ConfigurationError
from offload.job import ClaimRequest, JobFilter, JobRecord, JobState, Lease, NewJob, new_job_id
from offload.outcome import Dead, RetryAt, Snoozed, Succeeded
from offload.worker import Worker, WorkerConfig
from tests.procs import kill_all, ledger_lines, start_worker, stop, wait_for
from tests.services import (
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    RABBITMQ_URL,
    delete_rabbitmq_prefix,
    require_port,
    unique_name,
)
from tests.test_rabbitmq_backend import close_between_gates, lose_queues

Make = Callable[[], Awaitable[DirectRabbitMQBackend]]
HARNESS_APP = "reliability.app:app"  # its record task writes start and finish lines
ACK_LAG_S = 0.5  # a finished job is acked at once; on a loaded machine it may take this long


@pytest.fixture
def prefix() -> Iterator[str]:
    require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    name = unique_name("offload_d")
    yield name
    delete_rabbitmq_prefix(name)


@pytest.fixture
async def make(prefix: str) -> AsyncIterator[Make]:
    opened: list[DirectRabbitMQBackend] = []

    async def make() -> DirectRabbitMQBackend:
        backend = from_url(f"{RABBITMQ_URL}?prefix={prefix}")
        assert isinstance(backend, DirectRabbitMQBackend)
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
    backend: DirectRabbitMQBackend, n: int, limit: int = 10, timeout_s: float = 15
) -> list[JobRecord]:
    out: list[JobRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += await backend.claim(req(limit - len(out)))
        if len(out) < n:
            await backend.wait_for_work(["q"], 0.05)
    return out


async def wait_buffered(backend: DirectRabbitMQBackend, n: int) -> None:
    """Wait (consuming, not claiming) until ``backend`` holds ``n`` pushed messages."""
    feed = await backend._broker.feed("q")
    deadline = time.monotonic() + 10
    while feed.buffered < n:
        assert time.monotonic() < deadline, f"{feed.buffered} of {n} messages pushed"
        await backend.wait_for_work(["q"], 0.05)


def total_messages(name: str) -> int:
    """Ready plus unacknowledged messages of a broker queue (rabbitmqctl)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    counts = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
    return int(counts.get(name, 0))


async def ready(name: str) -> int:
    """Messages ready in a broker queue (0 for a queue that does not exist)."""
    conn = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await conn.channel()
        try:
            q = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return 0
        return q.declaration_result.message_count or 0
    finally:
        await conn.close()


async def dead_letters(prefix: str, queue: str = "q") -> list[tuple[Carried, str]]:
    """Take every dead letter of ``queue``: the carried job and its x-offload-error."""
    return [(msgspec.json.decode(b, type=Carried), e) for b, e in await raw_dead(prefix, queue)]


async def raw_dead(prefix: str, queue: str = "q") -> list[tuple[bytes, str]]:
    """Take every dead letter of ``queue``: its body and its x-offload-error."""
    conn = await aio_pika.connect(RABBITMQ_URL)
    out: list[tuple[bytes, str]] = []
    try:
        channel = await conn.channel()
        q = await channel.declare_queue(f"{prefix}.dead.{queue}", durable=True)
        while (m := await q.get(no_ack=True, fail=False)) is not None:
            error = (m.headers or {}).get("x-offload-error")
            out.append((m.body, str(error)))
    finally:
        await conn.close()
    return out


def test_an_empty_store_option_is_an_error_not_the_store_less_backend() -> None:
    with pytest.raises(ConfigurationError, match="empty"):
        from_url(f"{RABBITMQ_URL}?prefix=p&store=")


@pytest.mark.parametrize(
    "option", ["timeout_s=0", "timeout_s=x", "orphan_after_s=-1", "orphan_after_s=inf"]
)
def test_durations_in_the_url_must_be_positive_numbers(option: str) -> None:
    with pytest.raises(ConfigurationError, match="positive number of seconds"):
        from_url(f"{RABBITMQ_URL}?prefix=p&{option}")


def test_delays_from_untrusted_data_are_clamped() -> None:
    assert (ms(-1.0), ms(float("nan")), ms(0.0), ms(0.0011)) == (0, 0, 0, 2)
    assert ms(float("inf")) == ms(1e300) == MAX_DELAY_MS


def test_from_url_without_a_store_is_the_store_less_backend() -> None:
    backend = from_url(f"{RABBITMQ_URL}?prefix=p")
    assert isinstance(backend, DirectRabbitMQBackend)
    caps = backend.capabilities
    assert not caps.inspect and not caps.results and not caps.unique and not caps.pause
    assert caps.priorities and caps.delayed and caps.notify and caps.cross_process
    assert "guest:***@" in backend.url


async def test_inspection_says_how_to_add_a_store(make: Make) -> None:
    backend = await make()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: backend.get("x"),
        lambda: backend.list_jobs(JobFilter()),
        lambda: backend.counts(),
        lambda: backend.cancel("x"),
        lambda: backend.requeue("x"),
        lambda: backend.delete(["x"]),
        lambda: backend.purge([JobState.DEAD]),
        lambda: backend.set_paused("q", True),
        lambda: backend.paused_queues(),
        lambda: backend.workers(),
        lambda: backend.wait_done("x", 0.1),
        lambda: backend.set_progress([(Lease("x", "w", 1), b"0.5")]),
    ]
    for call in calls:
        with pytest.raises(CapabilityUnavailable, match=r"\?store=sqlite:///"):
            await call()


async def test_keys_and_depth_limits_are_refused_before_anything_is_published(
    make: Make, prefix: str
) -> None:
    backend = await make()
    with pytest.raises(CapabilityUnavailable, match="key"):
        await backend.enqueue([job(), job(key="k")])
    with pytest.raises(CapabilityUnavailable, match="depth limits"):
        await backend.enqueue([job()], limits={"q": 10})
    await backend.enqueue([job()], limits={"other": 10})
    assert await ready(f"{prefix}.m.q") == 1


async def test_a_claim_runs_what_the_message_carries(make: Make) -> None:
    producer, worker = await make(), await make()
    (rec,) = await producer.enqueue([job(priority=4, max_attempts=7)])
    assert rec.state is JobState.QUEUED
    (got,) = await claim_until(worker, 1)
    assert (got.id, got.task, got.args, got.priority) == (rec.id, "t", b'{"x":1}', 4)
    assert (got.state, got.attempt, got.max_attempts) == (JobState.RUNNING, 1, 7)
    assert got.lease is not None
    assert await worker.heartbeat([got.lease], 30.0) == {got.id}
    await worker.complete([(got.lease, Succeeded(b"1"))])
    assert await worker.heartbeat([got.lease], 30.0) == set()
    await worker.close()
    other = await make()
    assert await other.claim(req(10)) == []  # acked: it does not come back


async def test_retry_carries_the_attempt_and_error_through_a_delay_queue(make: Make) -> None:
    backend = await make()
    await backend.enqueue([job(max_attempts=3)])
    (first,) = await claim_until(backend, 1)
    assert first.lease is not None
    t0 = time.monotonic()
    await backend.complete([(first.lease, RetryAt(0.2, "boom"))])
    (second,) = await claim_until(backend, 1)
    assert time.monotonic() - t0 >= 0.15
    assert second.attempt == 2
    assert [(e.attempt, e.error) for e in second.errors] == [(1, "boom")]
    assert second.lease is not None
    await backend.complete([(second.lease, Snoozed(0.0))])  # gives the attempt back
    (third,) = await claim_until(backend, 1)
    assert third.attempt == 2


async def test_dead_jobs_go_to_the_dead_letter_queue(
    make: Make, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await make()
    (rec,) = await backend.enqueue([job(max_attempts=1)])
    (got,) = await claim_until(backend, 1)
    assert got.id == rec.id
    assert got.lease is not None
    await backend.complete([(got.lease, Dead("ValueError: no"))])
    ((carried, error),) = await dead_letters(prefix)
    assert error == "ValueError: no"
    assert (carried.task, carried.attempt, carried.errors[-1].error) == ("t", 1, "ValueError: no")
    assert await backend.claim(req(10)) == []
    assert "lost" not in caplog.text  # the dead queue's first declare is no loss


async def test_a_job_whose_worker_dies_every_time_ends_up_dead(make: Make, prefix: str) -> None:
    """Each claimant's connection dies with the job unacknowledged; the broker redelivers it
    and the next claim counts the lost delivery as an attempt."""
    producer = await make()
    await producer.enqueue([job(max_attempts=2)])
    seen: list[int] = []
    for _ in range(2):
        victim = await make()
        (got,) = await claim_until(victim, 1)
        seen.append(got.attempt)
        await victim.close()  # like a crash: the claimed message is not acked
    assert seen == [1, 2]
    last = await make()
    deadline = time.monotonic() + 10
    letters: list[tuple[Carried, str]] = []
    while not letters and time.monotonic() < deadline:
        assert await last.claim(req(10)) == []  # the redelivery is not started again
        letters = await dead_letters(prefix)
        await asyncio.sleep(0.05)
    ((carried, error),) = letters
    assert carried.attempt == 2 and "attempts exhausted" in error
    assert [e.error for e in carried.errors] == [LEASE_EXPIRED_ERROR, LEASE_EXPIRED_ERROR]


async def test_messages_handed_back_unstarted_do_not_count_as_attempts(make: Make) -> None:
    """A waiting worker buffers pushed messages; when it stops waiting they go back as copies
    (a requeue would mark them redelivered, which reads as a crash)."""
    idle, busy = await make(), await make()
    await idle.claim(req(5))  # starts its consumer
    await idle.enqueue([job() for _ in range(5)])
    await wait_buffered(idle, 5)  # pushed into its buffer, never claimed
    got = await claim_until(busy, 5, limit=5)
    assert sorted(j.attempt for j in got) == [1] * 5


async def test_a_redelivered_message_handed_back_unstarted_keeps_its_lost_attempt(
    make: Make,
) -> None:
    """A worker crashes mid-job; the redelivered message lands in a worker that only waits
    and hands it back: the copy must still count the crashed attempt."""
    producer = await make()
    await producer.enqueue([job(max_attempts=5)])
    victim = await make()
    (got,) = await claim_until(victim, 1)
    assert got.attempt == 1
    idle = await make()
    await idle.claim(req(1))  # starts its consumer (takes nothing: the victim holds the job)
    await victim.close()  # crash: the message comes back marked redelivered
    await wait_buffered(idle, 1)
    busy = await make()
    (again,) = await claim_until(busy, 1)  # after the idle worker's linger hands it back
    assert again.attempt == 2
    assert [e.error for e in again.errors] == [LEASE_EXPIRED_ERROR]


async def test_a_lease_is_lost_with_its_connection(make: Make, prefix: str) -> None:
    backend = await make()
    await backend.enqueue([job()])
    (got,) = await claim_until(backend, 1)
    assert got.lease is not None
    backend._broker.broken()  # the connection is replaced at the next operation
    await backend._broker.ensure()
    assert await backend.heartbeat([got.lease], 30.0) == set()
    await backend.complete([(got.lease, Succeeded(None))])  # a no-op, not an error
    fresh = Lease(job_id="nope", worker_id="w", attempt=1)
    assert await backend.heartbeat([fresh], 30.0) == set()


async def test_undecodable_messages_are_dead_lettered_and_the_claim_goes_on(
    make: Make, prefix: str
) -> None:
    backend = await make()
    await backend.enqueue([job()])  # declares the queue
    bad = (
        b"not json",
        b'{"task": "", "args": 1, "max_attempts": 1, "created_at": 0}',
        b'{"task": "t", "args": {}, "max_attempts": 1, "created_at": 0, "run_at": 1e308}',
    )
    conn = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await conn.channel()
        for body in bad:
            message = aio_pika.Message(body, message_id=new_job_id())
            await channel.default_exchange.publish(message, routing_key=f"{prefix}.m.q")
    finally:
        await conn.close()
    # A job behind the bad messages: once it is claimed, they have been dead-lettered (a claim
    # takes the queue in order and publishes its dead letters before it returns).
    await backend.enqueue([job()])
    got = await claim_until(backend, 2, timeout_s=10)
    assert [g.task for g in got] == ["t", "t"]
    letters = await raw_dead(prefix)
    assert sorted(body for body, _ in letters) == sorted(bad)
    assert "undecodable message body" in dict(letters)[b"not json"]
    assert "empty task" in dict(letters)[bad[1]]
    assert "out of range" in dict(letters)[bad[2]]
    assert await backend.claim(req(10)) == []


async def test_an_app_runs_tasks_and_result_says_a_store_is_needed(prefix: str) -> None:
    require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    app = offload.App(f"{RABBITMQ_URL}?prefix={prefix}")
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
    """The foundation's kill -9 test, store-less: the ledger and the broker's queue are the
    only witnesses. The harness's task writes a start and a finish line per execution, so a
    job counts as done only when its body finished: lost = acknowledged - finished (counting
    starts could not tell at-least-once from acks taken at claim). Every job that ran twice
    must be one the killed worker had started."""
    url = f"{RABBITMQ_URL}?prefix={prefix}"
    ledger = tmp_path / "ledger.txt"
    n, concurrency = 1000, 20
    app = make_harness_app(url)
    record = app.get_task("record")
    # Jobs of 20 ms: the killed worker is in the middle of some whenever it dies.
    app.enqueue_many([record.prepare(i, str(ledger), 0.02) for i in range(n)])
    app.close_sync()
    acknowledged = set(range(n))  # enqueue_many returned: every one of them
    flags = ["--concurrency", str(concurrency)]
    first = start_worker(url, *flags, app=HARNESS_APP)
    second = None
    queue = f"{prefix}.m.default"

    def finished() -> set[int]:
        return {int(line.split()[1]) for line in ledger_lines(ledger) if line.startswith("F ")}

    try:
        wait_for(lambda: len(finished()) >= n // 3, 60, "a third of the jobs")
        t_kill = time.time()
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = start_worker(url, *flags, app=HARNESS_APP)
        # Every message acked: with acks after completion, every job has finished by then; a
        # backend that acks earlier gets here with jobs that never will (counted below).
        wait_for(lambda: total_messages(queue) == 0, 90, "every message to be acked")
        assert stop(second) == 0
    finally:
        kill_all([p for p in (first, second) if p is not None])
    assert total_messages(queue) == 0  # nothing came back when it stopped
    assert asyncio.run(ready(f"{prefix}.dead.default")) == 0
    events = [line.split() for line in ledger_lines(ledger)]
    starts = collections.Counter(int(e[1]) for e in events if e[0] == "S")
    twice = {i for i, k in starts.items() if k > 1}
    # Held by the killed worker: started there, and not finished there long before the kill
    # (a finished body's ack may still have been on its way).
    by_first = [(e[0], int(e[1]), float(e[3])) for e in events if int(e[2]) == first.pid]
    done_before = {i for kind, i, t in by_first if kind == "F" and t < t_kill - ACK_LAG_S}
    held = {i for kind, i, _ in by_first if kind == "S"} - done_before
    lost = acknowledged - finished()
    print(f"\nlost={len(lost)} duplicated={len(twice)} (the killed worker held {len(held)})")
    assert not lost, f"acknowledged, never finished: {sorted(lost)[:10]}"
    assert twice <= held, f"ran twice, not held by the killed worker: {sorted(twice - held)[:10]}"


async def test_workers_survive_repeated_connection_closes_without_a_store(prefix: str) -> None:
    """Several thousand jobs, two workers whose connections the broker closes again and again:
    every job runs, nothing is left in the queue or dead, work resumes after each close.

    The jobs wait at a gate the test opens between closes, so the three closes always happen
    mid-run, however slow rabbitmqctl is on a loaded machine (a fixed job duration did not:
    the drain once finished after two closes)."""
    url = f"{RABBITMQ_URL}?prefix={prefix}"
    apps = [offload.App(url) for _ in range(3)]  # a producer and two workers' apps
    ran: collections.Counter[int] = collections.Counter()
    gate = threading.Event()
    for a in apps:
        await a.open()

        @a.task(name="count", max_attempts=20)
        def count(i: int) -> None:
            gate.wait(timeout=120)
            time.sleep(0.005)
            ran[i] += 1

    n = 4000
    producer = apps[0]
    await producer.aenqueue_many([producer.get_task("count").prepare(i) for i in range(n)])
    config = WorkerConfig(concurrency=20, heartbeat_s=0.3, poll_s=0.1, grace_s=5)
    workers = [Worker(a, config) for a in apps[1:]]
    runs = [asyncio.create_task(w.run()) for w in workers]
    closes = 0
    work, dead = f"{prefix}.m.default", f"{prefix}.dead.default"
    try:
        closes = await close_between_gates(gate, ran, prefix)
        gate.set()
        for _ in range(1200):
            if len(ran) >= n and await asyncio.to_thread(total_messages, work) == 0:
                break  # every job ran, and every message (duplicates too) is acked
            await asyncio.sleep(0.1)
        assert set(ran) == set(range(n))  # at-least-once: some ran twice
        assert closes == 3
    finally:
        gate.set()
        for w in workers:
            await w.stop()
        await asyncio.gather(*runs, return_exceptions=True)
        for a in apps:
            await a.close()
    assert total_messages(work) == 0  # nothing was held (or handed back) when they stopped
    assert await ready(dead) == 0
    print(f"\nduplicated={sum(ran.values()) - n} after {closes} closes")


async def test_headers_travel_in_the_message(make: Make) -> None:
    backend = await make()
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    plain, tagged = await backend.enqueue([job(), job(headers=headers)])
    assert (plain.headers, tagged.headers) == ({}, headers)
    got = {r.id: r.headers for r in await claim_until(backend, 2)}
    assert got == {plain.id: {}, tagged.id: headers}


async def test_a_work_queue_the_broker_lost_is_reported(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a store the messages are the jobs: when RabbitMQ lost a work queue (deleted
    here; a crash moments after its declare can lose it), nothing can bring them back, and
    the next connection's first use of the queue says so, as an error."""
    backend = await make()
    await backend.enqueue([job()])
    await lose_queues(backend, sorted(backend.declared_queues()))
    await backend.enqueue([job()])
    lost = [r for r in caplog.records if "the jobs in them are lost" in r.message]
    assert [r.levelname for r in lost] == ["ERROR"]
    assert await claim_until(backend, 1)  # the queue is back: the new job runs
