"""The conformance suite on a backend without notify: the memory backend with its wake-up
removed, so ``wait_for_work`` only sleeps until the next job is due or the timeout ends.

Every real backend declares notify, so without this variant the suite's no-notify contract
(a polling backend still wakes when a delayed job becomes due, and never before) would never
run. It is a real backend of that kind (what a backend on a store without push would do),
not a stand-in for a service.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence

import pytest

from offload.backends.base import Backend
from offload.backends.memory import MemoryBackend, MemoryStore
from offload.backends.memory.limits import next_claimable
from offload.testing import BackendConformance, MakeBackend


class PollingMemoryBackend(MemoryBackend):
    """``memory://`` that declares ``notify=False`` and waits by sleeping alone."""

    capabilities = dataclasses.replace(MemoryBackend.capabilities, notify=False)

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        """Sleep until the earliest waiting job in ``queues`` is due (and its limits let it
        go), or ``timeout_s``."""
        st = self.store
        with st.lock:
            wanted = set(queues) - st.paused
            now = self._clock()
            at = next_claimable(st, wanted, now)
        delay = min(timeout_s, at - now) if at is not None else timeout_s
        await asyncio.sleep(max(delay, 0.0))


class TestPollingMemoryBackend(BackendConformance):
    @pytest.fixture
    async def make_backend(self) -> AsyncIterator[MakeBackend]:
        store = MemoryStore()
        opened: list[Backend] = []

        async def make() -> Backend:
            backend = PollingMemoryBackend("memory://", store=store)
            await backend.open()
            opened.append(backend)
            return backend

        yield make
        for backend in opened:
            await backend.close()
