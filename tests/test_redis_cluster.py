"""The redis+cluster:// backend on a real Redis Cluster (three masters, three replicas, on
loopback ports 7000-7005, started by tests/redis_cluster.sh): the conformance suite, the URL
form, and work over queues in several slots. Each test works under a key prefix of its own.

The conformance suite and the work over several slots also run on a Valkey Cluster of the
same layout (ports 7100-7105, ``CLUSTER_FLAVOR=valkey tests/redis_cluster.sh``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from redis.crc import key_slot

from offload.backends import from_url
from offload.backends.base import Backend
from offload.backends.redis import RedisBackend
from offload.errors import ConfigurationError, QueueFull
from offload.job import ClaimRequest, JobState, NewJob, new_job_id
from offload.outcome import Succeeded
from offload.testing import BackendConformance, MakeBackend
from offload.testing.machine import backend_machine
from tests.services import (
    CLUSTER_PORTS,
    CLUSTER_URLS,
    REDIS_CLUSTER_URL,
    REDIS_HOST,
    REDIS_PORT,
    REDIS_URL,
    delete_redis_cluster_prefix,
    delete_redis_prefix,
    require_port,
    require_redis_cluster,
    unique_name,
)

Factory = Callable[..., Awaitable[RedisBackend]]


@pytest.fixture(params=["redis", "valkey"])
def flavor(request: pytest.FixtureRequest) -> str:
    """Which cluster a test runs on: Redis's, or Valkey's (the same protocol, a fork)."""
    name: str = request.param
    return name


@pytest.fixture
def prefix(flavor: str) -> Iterator[str]:
    require_redis_cluster(flavor)
    name = unique_name("offload_t")
    yield name
    delete_redis_cluster_prefix(name, flavor)


@pytest.fixture
async def backends(prefix: str, flavor: str) -> AsyncIterator[Factory]:
    opened: list[RedisBackend] = []

    async def make(**options: object) -> RedisBackend:
        backend = RedisBackend(f"{CLUSTER_URLS[flavor]}/?prefix={prefix}", **options)
        await backend.open()
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        await backend.close()


class TestRedisClusterConformance(BackendConformance):
    # Removing 20,000 job hashes key by key across the nodes takes the teardown ~50 s.
    LIMIT_BURST_JOBS = 1_000

    @pytest.fixture
    async def make_backend(self, backends: Factory) -> MakeBackend:
        async def make() -> Backend:
            return await backends()

        return make


def job(queue: str, **kw: object) -> NewJob:
    return NewJob(id=new_job_id(), task="t", queue=queue, args=b"{}", **kw)  # type: ignore[arg-type]


def queues_in_distinct_slots(backend: RedisBackend, n: int) -> list[str]:
    """``n`` queue names whose keys hash to ``n`` different slots under this prefix."""
    out: dict[int, str] = {}
    i = 0
    while len(out) < n:
        out.setdefault(key_slot(backend.base(f"q{i}").encode()), f"q{i}")
        i += 1
    return list(out.values())


# -- URL -----------------------------------------------------------------------------------


def test_url_forms() -> None:
    backend = from_url("redis+cluster://u:secret@10.0.0.1:7000,10.0.0.2,[::1]:7002/?prefix=p")
    assert isinstance(backend, RedisBackend) and backend.cluster
    assert backend.prefix == "p" and "secret" not in backend.url
    assert from_url("rediss+cluster://h:7000").cluster  # type: ignore[attr-defined]
    assert not from_url("redis://h:6379/0").cluster  # type: ignore[attr-defined]
    for bad in ("redis+cluster://h:7000/3", "redis+cluster://h:x", "redis+cluster:///"):
        with pytest.raises(ConfigurationError):
            from_url(bad)


async def test_open_on_the_cluster_loads_every_master(backends: Factory) -> None:
    backend = await backends()
    assert backend.cluster
    assert await backend.counts() == {}


# -- several slots -------------------------------------------------------------------------


async def test_batch_over_several_slots(backends: Factory) -> None:
    backend = await backends()
    qs = queues_in_distinct_slots(backend, 3)
    jobs = [job(q) for q in qs for _ in range(4)]
    stored = await backend.enqueue(jobs)
    assert [r.id for r in stored] == [j.id for j in jobs]
    assert {q: c[JobState.QUEUED] for q, c in (await backend.counts()).items()} == dict.fromkeys(
        qs, 4
    )
    req = ClaimRequest(queues=tuple(qs), limit=5, worker_id="w")
    first = await backend.claim(req)
    assert len(first) == 5
    rest = await backend.claim(ClaimRequest(queues=tuple(qs), limit=50, worker_id="w"))
    assert len(rest) == 7 and not {j.id for j in first} & {j.id for j in rest}
    assert await backend.claim(req) == []
    await backend.complete([(j.lease, Succeeded()) for j in first + rest if j.lease])
    assert sum(c[JobState.SUCCEEDED] for c in (await backend.counts()).values()) == 12


async def test_claims_over_several_slots_take_turns(backends: Factory) -> None:
    backend = await backends()
    qs = queues_in_distinct_slots(backend, 2)
    await backend.enqueue([job(q) for q in qs for _ in range(10)])
    req = ClaimRequest(queues=tuple(qs), limit=1, worker_id="w")
    got = [(await backend.claim(req))[0].queue for _ in range(4)]
    assert sorted(got) == sorted(qs * 2)  # a busy first slot does not starve the second


async def test_named_claim_over_several_slots(backends: Factory) -> None:
    backend = await backends()
    qs = queues_in_distinct_slots(backend, 3)
    stored = await backend.enqueue([job(q) for q in qs for _ in range(2)])
    named = (stored[0].id, stored[3].id, stored[5].id, new_job_id())
    req = ClaimRequest(queues=tuple(qs), limit=10, worker_id="w", job_ids=named)
    assert {j.id for j in await backend.claim(req)} == set(named[:3])
    assert await backend.claim(req) == []  # taken already


async def test_queue_full_in_one_slot_stores_nothing(backends: Factory) -> None:
    backend = await backends()
    a, b, c = queues_in_distinct_slots(backend, 3)
    limits = {a: 10, b: 1}
    await backend.enqueue([job(b)], limits=limits)
    rejected = [job(c), job(a), job(b)]
    with pytest.raises(QueueFull) as info:
        await backend.enqueue(rejected, limits=limits)
    assert info.value.queue == b
    for j in rejected:  # not the job of the limited slot that fit, nor the unlimited one
        assert await backend.get(j.id) is None


async def test_wait_for_work_wakes_on_any_slot(backends: Factory) -> None:
    import asyncio
    import time

    producer, worker = await backends(), await backends()
    qs = queues_in_distinct_slots(producer, 3)
    waiting = asyncio.ensure_future(worker.wait_for_work(qs, 10.0))
    await asyncio.sleep(0.2)  # let the blocking pops start (a miss only makes this slower)
    t0 = time.monotonic()
    await producer.enqueue([job(qs[2])])
    await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - t0 < 2.0


async def client_ids(prefix: str, flavor: str) -> set[tuple[int, str]]:
    """(port, client id) of every connection the backends of ``prefix`` hold."""
    import redis.asyncio as aioredis

    out: set[tuple[int, str]] = set()
    for port in CLUSTER_PORTS[flavor]:
        client = aioredis.Redis(host=REDIS_HOST, port=port)
        try:
            clients = await client.client_list()
        finally:
            await client.aclose()
        out |= {(port, c["id"]) for c in clients if c.get("name") == f"offload:{prefix}"}
    return out


async def test_waits_over_several_slots_keep_their_connections(
    backends: Factory, prefix: str, flavor: str
) -> None:
    import asyncio

    producer, worker = await backends(), await backends()
    qs = queues_in_distinct_slots(producer, 3)

    async def woken_by(queue: str) -> None:
        waiting = asyncio.ensure_future(worker.wait_for_work(qs, 10.0))
        await asyncio.sleep(0.1)  # let the pops start (a miss only returns at once)
        await producer.enqueue([job(queue)])
        await asyncio.wait_for(waiting, 5.0)
        assert await worker.claim(ClaimRequest(queues=(queue,), limit=1, worker_id="w"))

    await woken_by(qs[0])
    before = await client_ids(prefix, flavor)
    for queue in (qs[1], qs[2], qs[0], qs[2]):
        await woken_by(queue)
    # The pops that did not fire were ended by their stop keys, not by closing connections.
    assert await client_ids(prefix, flavor) == before


async def test_scripts_are_loaded_again_after_a_flush(backends: Factory, flavor: str) -> None:
    from redis.asyncio.cluster import RedisCluster

    backend = await backends()
    qs = queues_in_distinct_slots(backend, 3)
    first_node = CLUSTER_URLS[flavor].replace("redis+cluster", "redis").split(",")[0]
    admin = RedisCluster.from_url(first_node)
    try:
        await admin.script_flush()  # every master forgets every script (as after a failover)
    finally:
        await admin.aclose()
    await backend.enqueue([job(q) for q in qs])
    assert len(await backend.claim(ClaimRequest(queues=tuple(qs), limit=9, worker_id="w"))) == 3


# -- connection budgets (pool_size, single server and cluster) -----------------------------


async def offload_connections(prefix: str, port: int) -> int:
    """Connections named by the backend of ``prefix`` on the server at ``port``."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=REDIS_HOST, port=port)
    try:
        clients = await client.client_list()
    finally:
        await client.aclose()
    return sum(1 for c in clients if c.get("name") == f"offload:{prefix}")


async def test_pool_size_bounds_a_single_server_backend() -> None:
    import asyncio

    require_port("Redis", REDIS_HOST, REDIS_PORT)
    prefix = unique_name("offload_t")
    backend = RedisBackend(f"{REDIS_URL}?prefix={prefix}&pool_size=2")
    await backend.open()
    try:
        (stored,) = await backend.enqueue([job("q")])
        reads = [backend.get(stored.id) for _ in range(30)]
        waits = [backend.wait_done(stored.id, 0.2) for _ in range(6)]
        got = await asyncio.gather(*reads, *waits)
        assert all(r is not None and r.id == stored.id for r in got)
        # Two clients (commands, blocking pops), at most two connections each.
        assert 2 <= await offload_connections(prefix, REDIS_PORT) <= 4
    finally:
        await backend.close()
        delete_redis_prefix(prefix)
    with pytest.raises(ConfigurationError):
        RedisBackend(f"{REDIS_URL}?pool_size=0")


async def test_pool_size_bounds_each_node_of_a_cluster(
    backends: Factory, prefix: str, flavor: str
) -> None:
    import asyncio

    backend = await backends(pool_size=2)
    qs = queues_in_distinct_slots(backend, 3)
    stored = await backend.enqueue([job(q) for q in qs])
    # Past the bound, callers wait their turn (redis-py's cluster pool alone would fail them).
    reads = [backend.get(r.id) for r in stored for _ in range(10)]
    waits = [backend.wait_for_work(qs[:1], 0.2) for _ in range(3)]
    done = [backend.wait_done(r.id, 0.2) for r in stored]
    got = await asyncio.gather(*reads, *done, *waits)
    assert all(r is not None for r in got[: len(reads) + len(done)])
    # Two clients, two connections each, per node; and each client at most one more on a
    # node it asked for the slot map when the topology moved (after the failover tests it
    # does: seen 5 and 6). Unbounded, the 36 concurrent calls above open far more.
    for port in CLUSTER_PORTS[flavor]:
        assert await offload_connections(prefix, port) <= 2 * (2 + 1)


# -- the hypothesis state machine (tests/test_state_machine.py's, on the cluster) ----------


@contextlib.asynccontextmanager
async def cluster_storage() -> AsyncIterator[Backend]:
    prefix = unique_name("offload_t")
    backend = from_url(f"{REDIS_CLUSTER_URL}/?prefix={prefix}")
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()
        delete_redis_cluster_prefix(prefix)


def test_cluster_agrees_with_the_model() -> None:
    require_redis_cluster()
    run_state_machine_as_test(
        backend_machine(cluster_storage, delivers_at_once=True),
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
