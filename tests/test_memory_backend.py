"""The conformance suite on ``memory://``: every instance shares one in-process store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from offload.backends.base import Backend
from offload.backends.memory import MemoryBackend, MemoryStore
from offload.testing import BackendConformance, MakeBackend


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    async def make_backend(self) -> AsyncIterator[MakeBackend]:
        store = MemoryStore()
        opened: list[Backend] = []

        async def make() -> Backend:
            backend = MemoryBackend("memory://", store=store)
            await backend.open()
            opened.append(backend)
            return backend

        yield make
        for backend in opened:
            await backend.close()
