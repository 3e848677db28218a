"""Wait and claim in one call (:class:`~offload.backends.base.ClaimOnWake`): the contract of
``wait_for_work`` followed by ``claim``, kept by ``wait_and_claim``. It may make no claim
(None), and the caller then claims; these tests do that too, so they hold either way.

A backend without the ability is skipped: its workers wait, then claim, which the rest of the
suite covers. That a wait cancelled while it blocks leases nothing is the engine's to show
(tests/test_redis_backend.py waits until the server holds the pop, and sees it gone).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from offload.backends.base import Backend, ClaimOnWake
from offload.job import ClaimRequest, JobRecord, JobState
from offload.testing.conformance.waiting import MOST, still_waiting
from offload.testing.helpers import (
    PROMPT_S,
    MakeBackend,
    claim_one,
    claim_request,
    must_get,
    new_job,
    require,
)


def claims_on_wake(backend: Backend) -> ClaimOnWake:
    if not isinstance(backend, ClaimOnWake):
        pytest.skip(f"no wait_and_claim: {type(backend).__name__} waits, then claims")
    return backend


async def waiting_claim(
    backend: Backend, req: ClaimRequest
) -> asyncio.Task[list[JobRecord] | None]:
    """``wait_and_claim(req)`` on an empty queue, checked to be waiting (for a notify)."""
    require(backend, "notify")
    waiting = asyncio.create_task(claims_on_wake(backend).wait_and_claim(req, 30.0))
    await still_waiting(waiting, "wait_and_claim on an empty queue")
    return waiting


class ClaimOnWakeConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_wait_and_claim_leases_a_job_enqueued_while_it_waits(
        self, make_backend: MakeBackend
    ) -> None:
        worker, producer = await make_backend(), await make_backend()
        waiting = await waiting_claim(worker, claim_request(limit=2, worker_id="w9"))
        (rec,) = await producer.enqueue([new_job()])
        started = time.monotonic()
        woken = await asyncio.wait_for(waiting, PROMPT_S)
        assert time.monotonic() - started < PROMPT_S
        if woken is None:  # it made no claim this time: the caller claims, as after a wait
            woken = await worker.claim(claim_request(limit=2, worker_id="w9"))
        (got,) = woken
        assert (got.id, got.state, got.worker_id, got.attempt) == (
            rec.id,
            JobState.RUNNING,
            "w9",
            1,
        )
        assert got.lease is not None and got.lease_expires_at is not None
        stored = await must_get(producer, rec.id)
        assert (stored.state, stored.worker_id) == (JobState.RUNNING, "w9")

    async def test_wait_and_claim_takes_ready_work_at_once_up_to_its_limit(
        self, backend: Backend
    ) -> None:
        on_wake = claims_on_wake(backend)
        recs = await backend.enqueue([new_job(task=f"t{i}") for i in range(3)])
        started = time.monotonic()
        got = await on_wake.wait_and_claim(claim_request(limit=2), 30.0)
        assert time.monotonic() - started < PROMPT_S
        if got is None:  # work was there: no wait, and the caller claims
            got = await backend.claim(claim_request(limit=2))
        assert [r.id for r in got] == [r.id for r in recs[:2]]
        assert all(r.state is JobState.RUNNING for r in got)
        assert (await claim_one(backend)).id == recs[2].id  # the third was left waiting

    async def test_wait_and_claim_returns_nothing_at_its_timeout(self, backend: Backend) -> None:
        on_wake = claims_on_wake(backend)
        started = time.monotonic()
        assert await on_wake.wait_and_claim(claim_request(), 0.4) in ([], None)
        elapsed = time.monotonic() - started
        assert MOST * 0.4 <= elapsed < PROMPT_S, f"returned after {elapsed:.3f} s"
