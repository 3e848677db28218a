"""The PostgreSQL connection budget: ``listen=shared`` holds one connection per process
(queries and LISTEN on it), and 64 worker processes fit the default ``max_connections``."""

from __future__ import annotations

import asyncio
import time

import pytest

from offload.backends.base import Backend
from offload.backends.postgres import PostgresBackend
from offload.errors import ConfigurationError
from offload.testing.conformance import ClaimConformance, WaitingConformance
from offload.testing.helpers import MakeBackend
from tests import postgres_support
from tests.postgres_support import Factory, claim, job

schema = postgres_support.schema
backends = postgres_support.backends


class TestPostgresSharedListenConformance(ClaimConformance, WaitingConformance):
    """The claim and wait contracts (where the one connection is contended) on listen=shared."""

    @pytest.fixture
    async def make_backend(self, backends: Factory) -> MakeBackend:
        async def make(**options: object) -> PostgresBackend:
            return await backends(listen="shared", **options)

        return make

    @pytest.fixture
    async def backend(self, make_backend: MakeBackend) -> Backend:
        return await make_backend()


def test_listen_shared_means_one_connection() -> None:
    assert PostgresBackend("postgresql://db/app?listen=shared")._opts.pool_size == 1
    with pytest.raises(ConfigurationError, match="listen=shared needs pool_size=1"):
        PostgresBackend("postgresql://db/app?listen=shared&pool_size=2")
    with pytest.raises(ConfigurationError, match="listen must be"):
        PostgresBackend("postgresql://db/app?listen=yes")


async def test_an_idle_shared_listener_hears_new_work_at_once(backends: Factory) -> None:
    """The notification arrives while nothing runs on the one connection: only the socket
    watch can hear it before the wait's timeout."""
    worker = await backends(listen="shared")
    producer = await backends()
    assert await worker.claim(claim()) == []
    await worker.wait_for_work(["q"], 0.05)  # the listener is up after its first wait
    for _ in range(3):
        waiting = asyncio.create_task(worker.wait_for_work(["q"], 30.0))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await producer.enqueue([job()])
        await asyncio.wait_for(waiting, 5.0)
        assert time.monotonic() - started < 2.0
        assert len(await worker.claim(claim())) == 1
