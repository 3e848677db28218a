"""Waiting: for work to claim, and for a job to finish."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from offload.backends.base import Backend
from offload.job import JobState, new_job_id
from offload.outcome import Succeeded
from offload.testing.helpers import (
    PROMPT_S,
    QUEUE,
    MakeBackend,
    claim_one,
    lease_of,
    new_job,
    require,
)

# Lower bounds: a wait that returns at once passes every upper bound, so each test also checks
# that the waiter was waiting. "Most of" a timeout leaves room for a clock read a moment late,
# never for a wait that did not happen.
MOST = 0.75
# wait_for_work may return early (its contract: a spurious wake is harmless; PostgreSQL and
# RabbitMQ do once while they set up their listener or consumer), so its lower bound counts the
# returns of a caller that waits again and again, as a worker does: on an idle queue, a few in
# a window; a backend that does not wait returns thousands of times.
IDLE_WINDOW_S = 1.0
IDLE_TIMEOUT_S = 0.4
MAX_IDLE_RETURNS = 8  # ~3 timeouts in the window (4 with a jittered poll), plus spurious ones


class Waiter:
    """A caller of ``wait_for_work`` in a loop (a worker's idle loop); counts its returns.

    Stopped by a flag it reads after each return, never by cancelling a wait in flight (a
    backend's client library need not take a cancellation mid-round-trip gracefully)."""

    def __init__(self, backend: Backend, timeout_s: float) -> None:
        self.returns = 0
        self._timeout_s = timeout_s
        self._stopping = False
        self._task = asyncio.create_task(self._loop(backend))

    async def _loop(self, backend: Backend) -> None:
        while not self._stopping:
            await backend.wait_for_work([QUEUE], self._timeout_s)
            self.returns += 1
            await asyncio.sleep(0)  # a backend that returns at once must not starve the test

    async def returned_since(self, before: int, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while self.returns == before:
            assert time.monotonic() < deadline, f"wait_for_work still waiting after {within_s}s"
            await asyncio.sleep(0.01)  # polls a counter in this process, not the backend

    async def stop(self) -> None:
        """End the loop at its next return (at most its timeout away)."""
        self._stopping = True
        await asyncio.wait_for(self._task, self._timeout_s + PROMPT_S)


async def still_waiting(task: asyncio.Task[Any], what: str) -> None:
    """Fail when ``task`` (a wait with nothing to end it yet) has already returned."""
    await asyncio.sleep(0.1)  # the time in which it must not return: this sleep is the check
    assert not task.done(), f"{what} returned before anything happened: nothing waited"


class WaitingConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_wait_for_work_returns_by_timeout(self, backend: Backend) -> None:
        started = time.monotonic()
        await backend.wait_for_work([QUEUE], 0.2)
        assert time.monotonic() - started < PROMPT_S
        waiter = Waiter(backend, IDLE_TIMEOUT_S)
        try:
            await asyncio.sleep(IDLE_WINDOW_S)  # the window in which returns are counted
        finally:
            await waiter.stop()
        assert 1 <= waiter.returns <= MAX_IDLE_RETURNS, (
            f"{waiter.returns} returns from wait_for_work({IDLE_TIMEOUT_S}s) on an idle queue "
            f"in {IDLE_WINDOW_S}s: it does not wait"
        )

    async def test_wait_for_work_wakes_on_enqueue(self, make_backend: MakeBackend) -> None:
        waiter, producer = await make_backend(), await make_backend()
        require(waiter, "notify")
        loop = Waiter(waiter, 10.0)  # far longer than the wake may take
        try:
            await asyncio.sleep(0.3)  # the waiter subscribes; returns meanwhile are counted
            before = loop.returns
            assert before <= 2, f"wait_for_work(10s) returned {before} times on an idle queue"
            started = time.monotonic()
            await producer.enqueue([new_job()])
            await loop.returned_since(before, PROMPT_S)
            assert time.monotonic() - started < PROMPT_S
        finally:
            await loop.stop()

    async def test_wait_for_work_wakes_when_a_job_is_due(self, backend: Backend) -> None:
        require(backend, "delayed")
        if backend.capabilities.notify:
            pytest.skip("the contract asks this of backends without notify only")
        await backend.enqueue([new_job(delay_s=0.4)])
        started = time.monotonic()
        await asyncio.wait_for(backend.wait_for_work([QUEUE], 30.0), PROMPT_S)
        elapsed = time.monotonic() - started
        # Enqueued a moment before `started`: due at most 0.4 s after it.
        assert elapsed >= MOST * 0.4, f"returned {elapsed:.3f} s in, before the job was due"

    async def test_wait_done(self, make_backend: MakeBackend) -> None:
        waiter, worker = await make_backend(), await make_backend()
        assert await waiter.wait_done(new_job_id(), 0.1) is None
        (rec,) = await worker.enqueue([new_job()])
        lease = lease_of(await claim_one(worker))
        started = time.monotonic()
        latest = await waiter.wait_done(rec.id, 0.4)  # times out: the latest record
        elapsed = time.monotonic() - started
        assert latest is not None and latest.state is JobState.RUNNING
        assert elapsed >= MOST * 0.4, f"wait_done on a running job returned after {elapsed:.3f} s"
        started = time.monotonic()
        waiting = asyncio.create_task(waiter.wait_done(rec.id, 30.0))
        await still_waiting(waiting, "wait_done on a running job")
        await worker.complete([(lease, Succeeded(b"42"))])
        done = await asyncio.wait_for(waiting, PROMPT_S)
        assert done is not None and done.state is JobState.SUCCEEDED
        if worker.capabilities.results:
            assert done.result == b"42"
        assert time.monotonic() - started < PROMPT_S
        started = time.monotonic()  # a finished job is returned at once
        assert (await waiter.wait_done(rec.id, 30.0)) == done
        assert time.monotonic() - started < PROMPT_S
