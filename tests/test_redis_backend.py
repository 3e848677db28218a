"""The redis:// backend: the conformance suite plus its own guarantees (URL options, key
layout, retention, outages, connection kills). Each test works under a key prefix of its own
and deletes only the keys under it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from offload.backends import from_url
from offload.backends.base import Backend
from offload.backends.redis import RedisBackend
from offload.errors import BackendUnavailable, ConfigurationError
from offload.job import ClaimRequest, JobState, NewJob, new_job_id
from offload.outcome import Succeeded
from offload.testing import BackendConformance, MakeBackend, claim_one, lease_of, new_job
from tests.services import REDIS_HOST, REDIS_PORT, REDIS_URL, require_port, unique_name

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
