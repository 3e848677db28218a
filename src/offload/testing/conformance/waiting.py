"""Waiting: for work to claim, and for a job to finish."""

from __future__ import annotations

import asyncio
import time

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


class WaitingConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_wait_for_work_returns_by_timeout(self, backend: Backend) -> None:
        started = time.monotonic()
        await backend.wait_for_work([QUEUE], 0.2)
        assert time.monotonic() - started < PROMPT_S

    async def test_wait_for_work_wakes_on_enqueue(self, make_backend: MakeBackend) -> None:
        waiter, producer = await make_backend(), await make_backend()
        require(waiter, "notify")
        started = time.monotonic()
        waiting = asyncio.create_task(waiter.wait_for_work([QUEUE], 30.0))
        await asyncio.sleep(0.1)  # let the waiter subscribe; nothing to wait on instead
        await producer.enqueue([new_job()])
        await asyncio.wait_for(waiting, PROMPT_S)
        assert time.monotonic() - started < PROMPT_S

    async def test_wait_for_work_wakes_when_a_job_is_due(self, backend: Backend) -> None:
        require(backend, "delayed")
        if backend.capabilities.notify:
            pytest.skip("the contract asks this of backends without notify only")
        await backend.enqueue([new_job(delay_s=0.2)])
        await asyncio.wait_for(backend.wait_for_work([QUEUE], 30.0), PROMPT_S)

    async def test_wait_done(self, make_backend: MakeBackend) -> None:
        waiter, worker = await make_backend(), await make_backend()
        assert await waiter.wait_done(new_job_id(), 0.1) is None
        (rec,) = await worker.enqueue([new_job()])
        lease = lease_of(await claim_one(worker))
        latest = await waiter.wait_done(rec.id, 0.2)  # times out: the latest record
        assert latest is not None and latest.state is JobState.RUNNING
        started = time.monotonic()
        waiting = asyncio.create_task(waiter.wait_done(rec.id, 30.0))
        await asyncio.sleep(0.1)
        await worker.complete([(lease, Succeeded(b"42"))])
        done = await asyncio.wait_for(waiting, PROMPT_S)
        assert done is not None and done.state is JobState.SUCCEEDED
        if worker.capabilities.results:
            assert done.result == b"42"
        assert time.monotonic() - started < PROMPT_S
        started = time.monotonic()  # a finished job is returned at once
        assert (await waiter.wait_done(rec.id, 30.0)) == done
        assert time.monotonic() - started < PROMPT_S
