"""The amqp:// backend on the local RabbitMQ, with a SQLite file as its state store.

Each test uses its own queue-name prefix and deletes the queues it declared afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import quote

import aio_pika
import msgspec
import pytest

import offload
from offload.backends import from_url
from offload.backends.base import Backend
from offload.backends.brokered.outbox import OUTBOX_QUEUE
from offload.backends.brokered.store import claim_delivered
from offload.backends.rabbitmq import HEARTBEAT_S, RabbitMQBackend
from offload.backends.rabbitmq.direct import DirectRabbitMQBackend
from offload.backends.sqlite import SQLiteBackend
from offload.errors import BackendUnavailable, ConfigurationError
from offload.job import ClaimRequest, JobFilter, JobRecord, JobState, NewJob, new_job_id
from offload.outcome import RetryAt, Succeeded
from offload.testing import BackendConformance, MakeBackend
from offload.testing.conformance import ClaimConformance, LimitConformance, OutcomeConformance
from offload.worker import Worker, WorkerConfig
from tests.services import (
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    RABBITMQ_URL,
    REDIS_HOST,
    REDIS_PORT,
    REDIS_URL,
    backend_url,
    delete_redis_prefix,
    require_port,
    unique_name,
)

Make = Callable[[], Awaitable[RabbitMQBackend]]


def rabbitmq_url(tmp_path: Path, prefix: str, store: str | None = None) -> str:
    """The isolated URL form: a per-test prefix and a per-test store (SQLite by default)."""
    store = store or f"sqlite:///{tmp_path / 'state.db'}"
    return f"{RABBITMQ_URL}?prefix={prefix}&store={quote(store, safe='')}"


@contextlib.asynccontextmanager
async def rabbits(url: str) -> AsyncIterator[Make]:
    """A factory of opened backends on ``url``; afterwards the broker objects they declared
    are deleted (by name: quicker than listing them with rabbitmqctl) and they are closed."""
    opened: list[RabbitMQBackend] = []

    async def make() -> RabbitMQBackend:
        backend = from_url(url)
        assert isinstance(backend, RabbitMQBackend)
        await backend.open()
        opened.append(backend)
        return backend

    try:
        yield make
    finally:
        names = set().union(*(b.declared_queues() for b in opened)) if opened else set()
        if opened:
            await opened[0].delete_broker_objects(sorted(names))
        for backend in opened:
            await backend.close()


@pytest.fixture
async def make_rabbit(tmp_path: Path) -> AsyncIterator[Make]:
    require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    async with rabbits(rabbitmq_url(tmp_path, unique_name("offload_t"))) as make:
        yield make


class TestRabbitMQConformance(BackendConformance):
    @pytest.fixture
    async def make_backend(self, make_rabbit: Make) -> MakeBackend:
        async def make() -> Backend:
            return await make_rabbit()

        return make


class TestRabbitMQRedisConformance(ClaimConformance, OutcomeConformance, LimitConformance):
    """The parts of the contract a Redis state store changes (its claim script serves both the
    broker's named claims and the limited lane's: offload.backends.brokered.limited): claims,
    outcomes and limits. The whole suite on this form takes minutes more of CI and adds
    nothing the SQLite-store class above and the Redis backend's own suite do not cover."""

    @pytest.fixture
    async def backend(self, make_backend: MakeBackend) -> Backend:
        return await make_backend()

    @pytest.fixture
    async def make_backend(self, tmp_path: Path) -> AsyncIterator[MakeBackend]:
        require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
        require_port("Redis", REDIS_HOST, REDIS_PORT)
        prefix = unique_name("offload_t")
        url = rabbitmq_url(tmp_path, prefix, store=f"{REDIS_URL}?prefix={prefix}")
        try:
            async with rabbits(url) as make_rabbit:

                async def make() -> Backend:
                    return await make_rabbit()

                yield make
        finally:
            delete_redis_prefix(prefix)


def job(queue: str = "q", **kw: object) -> NewJob:
    return NewJob(id=new_job_id(), task="t", queue=queue, args=b"{}", **kw)  # type: ignore[arg-type]


def req(limit: int, queue: str = "q", worker: str = "w", lease_s: float = 30.0) -> ClaimRequest:
    return ClaimRequest(queues=(queue,), limit=limit, worker_id=worker, lease_s=lease_s)


def test_a_store_is_required() -> None:
    with pytest.raises(ConfigurationError, match=r"\?store="):
        RabbitMQBackend(RABBITMQ_URL)


def test_url_masks_the_password(tmp_path: Path) -> None:
    backend = RabbitMQBackend(rabbitmq_url(tmp_path, "p"))
    assert "guest:***@" in backend.url


async def test_messages_are_durable_priority_queue_messages(make_rabbit: Make) -> None:
    backend = await make_rabbit()
    await backend.enqueue([job(priority=3)])
    (name,) = [n for n in backend.declared_queues() if n.endswith(".q.q")]
    out = rabbitmqctl("list_queues", "name", "durable", "arguments", "messages")
    line = next(ln for ln in out.splitlines() if ln.startswith(name + "\t"))
    assert "\ttrue\t" in line and "x-max-priority" in line and line.endswith("\t1")


async def test_retry_goes_through_delay_queues_and_comes_back(make_rabbit: Make) -> None:
    backend = await make_rabbit()
    (rec,) = await backend.enqueue([job()])
    (got,) = await backend.claim(req(1))
    assert got.lease is not None
    await backend.complete([(got.lease, RetryAt(delay_s=0.25, error="boom"))])
    assert await backend.claim(req(1)) == []
    assert any(".d.q." in n for n in backend.declared_queues())
    again = await claim_eventually(backend, 1)
    assert [(j.id, j.attempt) for j in again] == [(rec.id, 2)]


async def test_cancelled_job_message_is_dropped(make_rabbit: Make) -> None:
    backend = await make_rabbit()
    (rec,) = await backend.enqueue([job()])
    await backend.cancel(rec.id)
    assert await backend.claim(req(5)) == []
    assert not backend._claimer.parked.get("q"), "the message was parked, not dropped"
    # Dropped: acked, so the broker holds it neither ready nor unacknowledged.
    assert await queue_drained(backend), "the cancelled job's message is still in the broker"


async def test_a_parked_duplicate_does_not_hold_back_fresh_work(make_rabbit: Make) -> None:
    """A second message for a job that runs here (cancelled and requeued while queued) is
    parked until that job ends; it must not take the place of a fresh job in a claim.
    Found by the state machine: with limit 1 and one parked message, no claim took any."""
    backend = await make_rabbit()
    (a,) = await backend.enqueue([job()])
    await backend.cancel(a.id)
    await backend.requeue(a.id)  # two messages for a: the first is not dropped until delivered
    (got,) = await claim_eventually(backend, 1)
    assert got.id == a.id
    (b,) = await backend.enqueue([job()])
    # the duplicate of a is delivered (and parked) alongside b, or before it
    taken = await claim_eventually(backend, 1)
    (c,) = await backend.enqueue([job()])
    taken += await claim_eventually(backend, 1)
    assert {r.id for r in taken} == {b.id, c.id}
    assert backend._claimer.parked.get("q"), "the duplicate is parked while a runs"


async def test_lost_connection_returns_messages_and_work_resumes(make_rabbit: Make) -> None:
    worker, producer = await make_rabbit(), await make_rabbit()
    recs = await producer.enqueue([job() for _ in range(5)])
    held = await worker.claim(req(5, lease_s=1.0))
    assert len(held) == 5
    close_connections(worker.connection_name)
    # the worker lives on and still holds its store leases: it finishes its jobs even though
    # the broker has put the messages back; the other instance drops them as finished.
    await worker.complete([(j.lease, Succeeded()) for j in held if j.lease])
    assert await claim_eventually(producer, 5, expect=0) == []
    for rec in recs:
        got = await producer.get(rec.id)
        assert got is not None and got.state is JobState.SUCCEEDED
    await producer.enqueue([job()])
    assert len(await claim_eventually(worker, 1)) == 1  # reconnected on its own


async def test_an_instance_that_stops_claiming_hands_messages_back(make_rabbit: Make) -> None:
    idle, busy = await make_rabbit(), await make_rabbit()
    assert await idle.claim(req(5)) == []  # its consumer now has room for five pushes
    recs = await busy.enqueue([job() for _ in range(3)])
    got = await claim_eventually(busy, 3, timeout_s=3.0)
    assert sorted(j.id for j in got) == sorted(r.id for r in recs)
    assert not idle._broker.buffered(["q"])


async def test_a_pause_elsewhere_stops_the_feed_at_the_next_claim(make_rabbit: Make) -> None:
    admin, worker = await make_rabbit(), await make_rabbit()
    assert await worker.claim(req(5)) == []  # the store said "nothing paused" just now
    await admin.set_paused("q", True)
    (rec,) = await admin.enqueue([job()])
    assert await worker.claim(req(5)) == []  # delivered, refused by the store: paused
    assert worker._claimer.paused == {"q"} and not worker._broker.buffered(["q"])
    (name,) = [n for n in worker.declared_queues() if n.endswith(".q.q")]
    ready = await arabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged")
    assert f"{name}\t1\t0" in ready.splitlines()  # handed back, not held
    await admin.set_paused("q", False)
    assert [j.id for j in await claim_eventually(worker, 1)] == [rec.id]


async def test_a_waiting_worker_is_woken_by_a_delayed_job_coming_back(make_rabbit: Make) -> None:
    backend = await make_rabbit()
    await backend.enqueue([job(delay_s=0.3)])
    assert await backend.claim(req(1)) == []
    loop = asyncio.get_running_loop()
    started = loop.time()
    got: list[JobRecord] = []
    while not got and loop.time() - started < 5.0:
        # woken by pushes (the message back from each hop of its delay chain), not timeouts
        await backend.wait_for_work(["q"], 10.0)
        got = await backend.claim(req(1))
    assert len(got) == 1 and loop.time() - started < 5.0


async def claim_eventually(
    backend: RabbitMQBackend, n: int, *, expect: int | None = None, timeout_s: float = 5.0
) -> list[JobRecord]:
    """Claim until ``n`` jobs arrived; with ``expect=0``, until the broker's queue holds no
    message at all (none ready, none unacknowledged) and none is parked here: any message on
    its way (a redelivery after a lost connection) has arrived and was dropped, not merely
    not yet delivered."""
    out: list[JobRecord] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            out += await backend.claim(req(n - len(out)))
        except BackendUnavailable:  # reconnecting: the worker would retry too
            await asyncio.sleep(0.05)
            continue
        if len(out) >= n:
            return out
        if (
            expect == 0
            and not backend._claimer.parked.get("q")
            and await queue_drained(backend, wait_s=0)
        ):
            return out
        await backend.wait_for_work(["q"], 0.05)
    assert expect != 0, f"the broker's queue still holds messages after {timeout_s}s"
    return out


async def queue_drained(backend: RabbitMQBackend, queue: str = "q", wait_s: float = 5.0) -> bool:
    """True when the broker's queue for ``queue`` holds no message, ready or unacknowledged,
    within ``wait_s`` (the broker's counters trail an ack by a moment; 0: one reading)."""
    (name,) = [n for n in backend.declared_queues() if n.endswith(f".q.{queue}")]
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        listing = await arabbitmqctl("list_queues", "name", "messages")
        if f"{name}\t0" in listing.splitlines():
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)  # polls the broker's management view: nothing to wait on


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def close_connections(name: str) -> int:
    """Close every broker connection whose client-provided name is ``name``; how many."""
    out = rabbitmqctl("list_connections", "pid", "client_properties")
    pids = [ln.split("\t")[0] for ln in out.splitlines() if f'"{name}"' in ln or name in ln]
    for pid in pids:
        rabbitmqctl("close_connection", pid, "test closes it")
    return len(pids)


async def arabbitmqctl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode()


async def close_between_gates(
    gate: threading.Event, ran: collections.Counter[int], prefix: str, rounds: int = 3
) -> int:
    """``rounds`` times: open the jobs' gate until 100 more have run (work resumed), close it
    so the next jobs hold their slots, and have the broker close every connection of
    ``prefix``. The closes always land mid-run, however slow rabbitmqctl is. How many closes."""
    for _ in range(rounds):
        before = sum(ran.values())
        gate.set()  # work (resumes) ...
        for _ in range(600):
            if sum(ran.values()) >= before + 100:
                break
            await asyncio.sleep(0.05)
        assert sum(ran.values()) >= before + 100, "work did not resume after a close"
        gate.clear()  # ... and the next jobs hold their slots while the broker closes
        listing = await arabbitmqctl("list_connections", "pid", "client_properties")
        for line in listing.splitlines():
            if f"offload:{prefix}:" in line:
                await arabbitmqctl("close_connection", line.split("\t")[0], "test")
    return rounds


async def test_workers_survive_repeated_connection_closes(tmp_path: Path) -> None:
    """Thousands of jobs, two workers, their connections closed three times by the broker
    while jobs run: every job succeeds, none is lost, work resumes after each close.

    The jobs wait at a gate the test opens between closes, so the three closes always happen
    mid-run, however slow rabbitmqctl is on a loaded machine (a fixed job duration did not:
    the drain once finished after one close)."""
    require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    prefix = unique_name("offload_cc")
    url = rabbitmq_url(tmp_path, prefix)
    apps = [offload.App(url) for _ in range(3)]  # a producer and two workers' apps
    for a in apps:
        await a.open()
    ran: collections.Counter[int] = collections.Counter()
    gate = threading.Event()

    for a in apps:

        @a.task(name="count", max_attempts=10)
        def count(i: int) -> None:
            gate.wait(timeout=120)
            time.sleep(0.005)
            ran[i] += 1

    n = 3000
    producer = apps[0]
    await producer.aenqueue_many([producer.get_task("count").prepare(i) for i in range(n)])
    config = WorkerConfig(
        concurrency=20, lease_s=2.0, heartbeat_s=0.3, poll_s=0.1, recover_s=0.3, grace_s=5
    )
    workers = [Worker(a, config) for a in apps[1:]]
    runs = [asyncio.create_task(w.run()) for w in workers]
    closes = 0
    try:
        closes = await close_between_gates(gate, ran, prefix)
        gate.set()
        for _ in range(1200):
            done = (await producer.backend.counts()).get("default", {})
            if done.get(JobState.SUCCEEDED, 0) >= n:
                break
            await asyncio.sleep(0.1)
        counts = (await producer.backend.counts()).get("default", {})
        assert counts.get(JobState.SUCCEEDED, 0) == n, counts
        assert set(ran) == set(range(n))  # at-least-once: some may have run twice
        assert closes == 3
    finally:
        for w in workers:
            await w.stop()
        await asyncio.gather(*runs, return_exceptions=True)
        backends = [a.backend for a in apps]
        names = set().union(
            *(b.declared_queues() for b in backends if isinstance(b, RabbitMQBackend))
        )
        rabbit = backends[0]
        assert isinstance(rabbit, RabbitMQBackend)
        await rabbit.delete_broker_objects(sorted(names))
        for a in apps:
            await a.close()


def connection_heartbeats(name: str) -> list[int]:
    """The heartbeat timeouts (s) the broker negotiated with the connections named ``name``."""
    out = rabbitmqctl("list_connections", "timeout", "client_properties")
    return [int(ln.split("\t")[0]) for ln in out.splitlines() if f'"{name}"' in ln]


async def test_heartbeat_is_short_by_default_and_the_url_can_set_it(
    make_rabbit: Make, tmp_path: Path
) -> None:
    backend = await make_rabbit()
    assert connection_heartbeats(backend.connection_name) == [HEARTBEAT_S]
    other = RabbitMQBackend(rabbitmq_url(tmp_path, unique_name("offload_hb")) + "&heartbeat=20")
    await other.open()
    try:
        assert connection_heartbeats(other.connection_name) == [20]
    finally:
        await other.delete_broker_objects([])
        await other.close()


class IgnoresJobIds(SQLiteBackend):
    """A real SQLite store that leases any due jobs, as stores did before ClaimRequest.job_ids."""

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        return await super().claim(msgspec.structs.replace(req, job_ids=None))


async def test_jobs_a_store_leased_beyond_those_named_are_handed_back(tmp_path: Path) -> None:
    store = IgnoresJobIds(f"sqlite:///{tmp_path / 'state.db'}")
    await store.open()
    try:
        recs = await store.enqueue([job() for _ in range(3)])
        # the store leases the first job in claim order, not the one delivered
        assert await claim_delivered(store, "q", [recs[2].id], "w", 30.0) == {}
        for rec in recs:
            got = await store.get(rec.id)
            assert got is not None and (got.state, got.attempt) == (JobState.QUEUED, 0)
    finally:
        await store.close()


class FailsOneClaim(SQLiteBackend):
    """A real SQLite store whose next claim fails, as an unreachable store's would."""

    failing = True

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        if self.failing:
            self.failing = False
            raise BackendUnavailable("injected: the store does not answer")
        return await super().claim(req)


async def test_messages_go_back_when_the_store_fails_during_a_claim(
    make_rabbit: Make, tmp_path: Path
) -> None:
    backend = await make_rabbit()
    recs = await backend.enqueue([job() for _ in range(5)])
    failing = FailsOneClaim(f"sqlite:///{tmp_path / 'state.db'}")  # the backend's store file
    await failing.open()
    try:
        backend._claimer._store = failing  # the claim path's store only
        with pytest.raises(BackendUnavailable, match="injected"):
            await backend.claim(req(5))
        # kept unsettled, the five messages would wait for the connection to close
        got = await claim_eventually(backend, 5, timeout_s=3.0)
        assert sorted(j.id for j in got) == sorted(r.id for r in recs)
    finally:
        await failing.close()


@pytest.mark.parametrize("store_kind", ["sqlite", "redis", "postgres"])
async def test_two_workers_drain_one_queue(tmp_path: Path, store_kind: str) -> None:
    """Two workers (two backend instances, as two processes would have) drain one queue: every
    job runs exactly once, both take part, and the drain does not stall."""
    require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    n, stall_s = 3000, 60.0
    with backend_url(store_kind, tmp_path) as store:
        url = rabbitmq_url(tmp_path, unique_name("offload_dr"), store)
        apps = [offload.App(url) for _ in range(3)]  # a producer and two workers' apps
        ran: collections.Counter[int] = collections.Counter()
        all_ran = asyncio.Event()
        for a in apps:

            @a.task(name="tick")
            async def tick(i: int) -> None:
                ran[i] += 1
                if len(ran) == n:
                    all_ran.set()

        for a in apps:
            await a.open()
        producer = apps[0]
        await producer.aenqueue_many([producer.get_task("tick").prepare(i) for i in range(n)])
        workers = [Worker(a, WorkerConfig(concurrency=50)) for a in apps[1:]]
        runs = [asyncio.create_task(w.run()) for w in workers]
        try:
            try:
                await asyncio.wait_for(all_ran.wait(), stall_s)
            except TimeoutError:
                pytest.fail(f"stalled: {len(ran)} of {n} jobs ran within {stall_s:.0f}s")
            assert [w.jobs_done > 0 for w in workers] == [True, True]
            assert max(ran.values()) == 1  # no fault, so no job may run twice
        finally:
            await stop_and_clean(workers, runs, apps)


async def stop_and_clean(
    workers: list[Worker], runs: list[asyncio.Task[None]], apps: list[offload.App]
) -> None:
    for w in workers:
        await w.stop()
    await asyncio.gather(*runs, return_exceptions=True)
    backends = [a.backend for a in apps if isinstance(a.backend, RabbitMQBackend)]
    names = set().union(*(b.declared_queues() for b in backends))
    await backends[0].delete_broker_objects(sorted(names))
    for a in apps:
        await a.close()


PRODUCER_DIES = """
import os, sys
import offload
from offload.backends.rabbitmq.broker import Broker

async def die(self, items):
    os._exit(9)  # like kill -9 after the store write, before any message is published

Broker.publish = die
app = offload.App(sys.argv[1])

@app.task(name="count")
def count(i: int) -> None: ...

app.enqueue_many([count.prepare(i) for i in range(5)])
"""


async def test_jobs_of_a_producer_killed_before_publishing_run(tmp_path: Path) -> None:
    """The producer dies between storing its jobs and publishing their messages: a worker's
    recovery publishes them once the outbox marker comes due, and they run."""
    require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    url = rabbitmq_url(tmp_path, unique_name("offload_ob")) + "&orphan_after_s=0.5"
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER_DIES)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), url)
    assert await asyncio.wait_for(proc.wait(), 60) == 9
    app = offload.App(url)
    ran: collections.Counter[int] = collections.Counter()

    @app.task(name="count")
    def count(i: int) -> None:
        ran[i] += 1

    await app.open()
    counts = await app.backend.counts()
    assert counts["default"][JobState.QUEUED] == 5  # stored, no message yet
    assert OUTBOX_QUEUE not in counts  # the marker is hidden
    worker = Worker(app, WorkerConfig(concurrency=4, poll_s=0.1, recover_s=0.2))
    run = asyncio.create_task(worker.run())
    try:
        for _ in range(200):
            if (await app.backend.counts())["default"].get(JobState.SUCCEEDED, 0) == 5:
                break
            await asyncio.sleep(0.05)
        assert ran == {i: 1 for i in range(5)}
        backend = app.backend
        assert isinstance(backend, RabbitMQBackend)
        markers = await backend.store.list_jobs(JobFilter(queue=OUTBOX_QUEUE))
        for _ in range(100):  # deleted once its jobs were published (they may run first)
            markers = await backend.store.list_jobs(JobFilter(queue=OUTBOX_QUEUE))
            if not markers.jobs:
                break
            await asyncio.sleep(0.02)
        assert markers.jobs == []
    finally:
        await stop_and_clean([worker], [run], [app])


async def test_a_published_enqueue_leaves_no_marker(make_rabbit: Make) -> None:
    backend = await make_rabbit()
    await backend.enqueue([job(), job()])
    store = backend.store
    for _ in range(100):
        if not (await store.list_jobs(JobFilter(queue=OUTBOX_QUEUE))).jobs:
            break
        await asyncio.sleep(0.02)
    assert (await store.list_jobs(JobFilter(queue=OUTBOX_QUEUE))).jobs == []
    assert (await backend.counts())["q"][JobState.QUEUED] == 2


async def test_workflow_steps_a_completer_released_but_never_published_run(
    tmp_path: Path,
) -> None:
    """The process that applied a step's outcome (and so released the next step in the store)
    dies before publishing the next step's message: the outbox marker it stored first comes
    due and a recovery publishes it (offload.backends.brokered.workflows)."""
    from offload.testing.helpers import lease_of
    from offload.workflow import chain
    from offload.workflow.canvas import build
    from offload.workflow.record import start, step_job_id

    require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    backend = from_url(rabbitmq_url(tmp_path, unique_name("offload_wf")) + "&orphan_after_s=0.3")
    assert isinstance(backend, RabbitMQBackend)
    shapes = offload.App("memory://")

    @shapes.task(name="wf.add", queue="wf")
    def add(x: int, y: int = 0) -> int:
        return x + y

    await backend.open()
    try:
        first, jobs = start(build(chain(add.s(1), add.s(2))))
        wf = await backend.enqueue_workflow(first, jobs)
        req = ClaimRequest(queues=("wf",), limit=5, worker_id="w1")
        (a,) = await backend.claim(req)
        publisher = backend._outbox.publisher
        publish = publisher.publish_jobs

        async def die(*args: object, **kwargs: object) -> None:
            raise BackendUnavailable("the process died here")

        publisher.publish_jobs = die  # type: ignore[method-assign]
        with pytest.raises(BackendUnavailable):
            await backend.complete([(lease_of(a), Succeeded(b"1"))])
        publisher.publish_jobs = publish  # type: ignore[method-assign]
        nxt = await backend.store.get(step_job_id(wf.id, 1))
        assert nxt is not None and nxt.state is JobState.QUEUED  # released, no message yet
        assert await backend.claim(req) == []
        await asyncio.sleep(0.4)  # the marker's grace (orphan_after_s): this wait is the test
        await backend.recover()
        (b,) = await backend.claim(req)
        assert b.id == nxt.id and msgspec.json.decode(b.args) == {"x": 1, "y": 2}
    finally:
        await backend.delete_broker_objects(sorted(backend.declared_queues()))
        await backend.close()


def test_retention_on_the_amqp_url_with_a_store_is_refused_naming_the_store(
    tmp_path: Path,
) -> None:
    """The store keeps the finished jobs, so ``retention`` belongs in its URL; on the amqp://
    URL it went to aio-pika, which ignored it: jobs were kept for the store's default."""
    db = tmp_path / "state.db"
    with pytest.raises(ConfigurationError, match="store's URL"):
        from_url(f"{RABBITMQ_URL}?store=sqlite:///{db}&retention=1d&retention_dead=forever")
    store = quote(f"sqlite:///{db}?retention=1d", safe="")
    backend = from_url(f"{RABBITMQ_URL}?store={store}")
    assert isinstance(backend, RabbitMQBackend)


async def lose_queues(
    backend: RabbitMQBackend | DirectRabbitMQBackend, names: Sequence[str]
) -> None:
    """Delete broker queues behind ``backend``'s back (as a crash can lose them), then cut its
    connection as a broker restart does: its next use reconnects."""
    connection = await aio_pika.connect(RABBITMQ_URL)
    channel = await connection.channel()
    for name in names:
        await channel.queue_delete(name)
    await connection.close()
    backend._broker.broken()


async def claim_all(backend: RabbitMQBackend, n: int, timeout_s: float = 20) -> list[JobRecord]:
    """Claim until ``n`` jobs started, running recovery passes meanwhile (a worker's)."""
    claimed: list[JobRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(claimed) < n and time.monotonic() < deadline:
        await backend.recover()  # (where an outbox sweep publishes what repair markers name)
        claimed += await backend.claim(req(10))
        await asyncio.sleep(0.05)
    return claimed


async def test_jobs_of_queues_the_broker_lost_get_messages_again(
    make_rabbit: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """RabbitMQ lost the work and delay queues and their messages (a durable queue declared
    moments before the broker was killed -9 can be lost: the reliability harness met it; here
    they are deleted): the first use of the queue on the next connection finds them gone and
    stores a repair marker, and a recovery pass gives every job the store has waiting a
    message again: they run (the delayed one too), and the marker is gone."""
    backend = await make_rabbit()
    due = [job() for _ in range(5)]
    later = job(delay_s=1.0)
    await backend.enqueue([*due, later])
    await lose_queues(backend, sorted(backend.declared_queues()))
    claimed = await claim_all(backend, 6)
    assert sorted(r.id for r in claimed) == sorted(j.id for j in [*due, later])
    assert "published 6 job(s) of queue 'q' again" in caplog.text
    assert (await backend.store.list_jobs(JobFilter(queue=OUTBOX_QUEUE))).jobs == []


async def test_a_lost_delay_queue_alone_is_found_too(make_rabbit: Make) -> None:
    """Only a delay queue was lost (declared just before the crash; the work queue was older):
    the first use of the work queue checks the delay queues too, and the delayed job runs."""
    backend = await make_rabbit()
    later = job(delay_s=0.5)
    await backend.enqueue([later])
    delays = sorted(n for n in backend.declared_queues() if ".d." in n)
    assert delays
    await lose_queues(backend, delays)
    assert [r.id for r in await claim_all(backend, 1)] == [later.id]


async def test_a_repair_the_store_cannot_take_leaves_the_queue_missing(
    make_rabbit: Make,
) -> None:
    """The store is down when the loss is found: nothing is declared, so the next use finds
    the queue gone again, and once the store is back the repair is stored and the jobs run."""
    backend = await make_rabbit()
    due = [job() for _ in range(3)]
    await backend.enqueue(due)
    work = backend._broker.work_name("q")
    await lose_queues(backend, [work])
    await backend.store.close()
    with pytest.raises(BackendUnavailable):
        await backend._broker.feed("q")  # a claim's first use of the queue (after the store's)
    connection = await aio_pika.connect(RABBITMQ_URL)
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await (await connection.channel()).declare_queue(work, passive=True)
    await connection.close()
    await backend.store.open()
    assert sorted(r.id for r in await claim_all(backend, 3)) == sorted(j.id for j in due)
