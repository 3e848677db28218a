"""What the postgresql:// test modules share: a schema of the test's own (dropped after),
a factory of backends on it, and job and claim builders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest

from offload.backends.postgres import PostgresBackend
from offload.job import ClaimRequest, NewJob, new_job_id
from tests.services import POSTGRES_HOST, POSTGRES_PORT, POSTGRES_URL, require_port, unique_name

Factory = Callable[..., Awaitable[PostgresBackend]]


def job(queue: str = "q", **kw: object) -> NewJob:
    return NewJob(id=new_job_id(), task="t", queue=queue, args=b'{"x": 1}', **kw)  # type: ignore[arg-type]


def claim(queue: str = "q", limit: int = 10, lease_s: float = 30.0) -> ClaimRequest:
    return ClaimRequest(queues=(queue,), limit=limit, worker_id="w", lease_s=lease_s)


async def drop_schema(schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A schema no other test uses, dropped afterwards (only ever one this test created)."""
    require_port("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name = unique_name("offload_t")
    yield name
    await drop_schema(name)


@pytest.fixture
async def backends(schema: str) -> AsyncIterator[Factory]:
    opened: list[PostgresBackend] = []

    async def make(**options: object) -> PostgresBackend:
        options.setdefault("auto_migrate", True)
        backend = PostgresBackend(f"{POSTGRES_URL}?schema={schema}", **options)
        await backend.open()
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        await backend.close()
