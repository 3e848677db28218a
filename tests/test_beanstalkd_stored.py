"""``beanstalk://?store=`` on the local beanstalkd, with a SQLite file (and PostgreSQL) as its
state store. Each test uses its own tube prefix and deletes its tubes' jobs afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from offload.backends import from_url
from offload.backends.base import Backend
from offload.backends.beanstalkd import StoredBeanstalkBackend
from offload.testing import BackendConformance, MakeBackend
from tests.services import BEANSTALKD_URL, backend_url, require_beanstalkd, unique_name

Make = Callable[[], Awaitable[StoredBeanstalkBackend]]


def beanstalk_url(prefix: str, store: str) -> str:
    return f"{BEANSTALKD_URL}?prefix={prefix}&store={quote(store, safe='')}"


@pytest.fixture
async def make_stalk(tmp_path: Path) -> AsyncIterator[Make]:
    require_beanstalkd()
    async for make in _maker(f"sqlite:///{tmp_path / 'state.db'}"):
        yield make


@pytest.fixture
async def make_stalk_pg(tmp_path: Path) -> AsyncIterator[Make]:
    require_beanstalkd()
    with backend_url("postgres", tmp_path) as store:
        async for make in _maker(store):
            yield make


async def _maker(store: str) -> AsyncIterator[Make]:
    url = beanstalk_url(unique_name("offload_t"), store)
    opened: list[StoredBeanstalkBackend] = []

    async def make() -> StoredBeanstalkBackend:
        backend = from_url(url)
        assert isinstance(backend, StoredBeanstalkBackend)
        await backend.open()
        opened.append(backend)
        return backend

    yield make
    tubes = set().union(*(b.used_tubes() for b in opened)) if opened else set()
    for backend in opened:
        await backend.close()
    if opened:
        await opened[0].open()
        await opened[0].delete_tubes(sorted(tubes))
        await opened[0].close()


class TestBeanstalkSQLiteConformance(BackendConformance):
    @pytest.fixture
    async def make_backend(self, make_stalk: Make) -> MakeBackend:
        async def make() -> Backend:
            return await make_stalk()

        return make


class TestBeanstalkPostgresConformance(BackendConformance):
    @pytest.fixture
    async def make_backend(self, make_stalk_pg: Make) -> MakeBackend:
        async def make() -> Backend:
            return await make_stalk_pg()

        return make
