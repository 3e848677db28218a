"""The hypothesis state machine (:mod:`offload.testing.machine`) against every backend.

Each example gets storage of its own, removed afterwards: a new in-memory store, a new SQLite
file, a new PostgreSQL schema, a new Redis key prefix, a new RabbitMQ queue prefix with a new
SQLite state store. A missing service skips locally and fails when
``OFFLOAD_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from offload.backends import from_url
from offload.backends.base import Backend
from offload.backends.memory import MemoryBackend
from offload.backends.rabbitmq import RabbitMQBackend
from offload.testing.machine import Storage, backend_machine
from tests.services import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    POSTGRES_URL,
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    RABBITMQ_URL,
    REDIS_HOST,
    REDIS_PORT,
    REDIS_URL,
    delete_redis_prefix,
    drop_postgres_schema,
    require_port,
    unique_name,
)


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Backend]:
    backend = from_url(url)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


@contextlib.asynccontextmanager
async def memory() -> AsyncIterator[Backend]:
    backend = MemoryBackend()
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


@contextlib.asynccontextmanager
async def sqlite() -> AsyncIterator[Backend]:
    with tempfile.TemporaryDirectory(prefix="offload_machine_") as tmp:
        async with opened(f"sqlite:///{tmp}/jobs.db") as backend:
            yield backend


@contextlib.asynccontextmanager
async def postgres() -> AsyncIterator[Backend]:
    schema = unique_name("offload_t")
    try:
        async with opened(f"{POSTGRES_URL}?schema={schema}&auto_migrate=1") as backend:
            yield backend
    finally:
        drop_postgres_schema(schema)


@contextlib.asynccontextmanager
async def redis() -> AsyncIterator[Backend]:
    prefix = unique_name("offload_t")
    try:
        async with opened(f"{REDIS_URL}?prefix={prefix}") as backend:
            yield backend
    finally:
        delete_redis_prefix(prefix)


@contextlib.asynccontextmanager
async def rabbitmq() -> AsyncIterator[Backend]:
    prefix = unique_name("offload_t")
    with tempfile.TemporaryDirectory(prefix="offload_machine_") as tmp:
        store = quote(f"sqlite:///{tmp}/state.db", safe="")
        async with opened(f"{RABBITMQ_URL}?prefix={prefix}&store={store}") as backend:
            assert isinstance(backend, RabbitMQBackend)
            try:
                yield backend
            finally:
                await backend.delete_broker_objects(sorted(backend.declared_queues()))


# Each kind's storage, the service it needs, and how much to explore (examples, steps in
# each): memory takes the most; the others fewer (each step checks every job's record and the
# counts, and lose_worker waits out a lease), so that each kind's run takes 5-20 s on a busy
# 2-core machine, well under a minute.
KINDS: dict[str, tuple[Storage, tuple[str, str, int] | None, int, int]] = {
    "memory": (memory, None, 150, 30),
    "sqlite": (sqlite, None, 60, 30),
    "postgres": (postgres, ("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT), 50, 25),
    "redis": (redis, ("Redis", REDIS_HOST, REDIS_PORT), 50, 25),
    "rabbitmq": (rabbitmq, ("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT), 40, 25),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_backend_agrees_with_the_model(kind: str) -> None:
    storage, service, examples, steps = KINDS[kind]
    if service is not None:
        require_port(*service)
    run_state_machine_as_test(
        backend_machine(storage, delivers_at_once=kind != "rabbitmq"),
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
