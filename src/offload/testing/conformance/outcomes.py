"""Outcomes: how each way an attempt ends is applied, one by one and in a batch."""

from __future__ import annotations

import asyncio

from offload.backends.base import Backend
from offload.job import JobState
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Snoozed, Succeeded
from offload.testing.helpers import (
    EXPIRY_WAIT_S,
    SHORT_LEASE_S,
    claim_one,
    claim_request,
    finish,
    lease_of,
    must_get,
    new_job,
    require,
)


class OutcomeConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_succeeded_stores_the_result_verbatim(self, backend: Backend) -> None:
        require(backend, "results")
        result = '{"caf\u00e9": [1, 2.5, null],  "n": "\\u2603"}'.encode()
        rec = await finish(backend, Succeeded(result))
        assert (rec.state, rec.result, rec.lease) == (JobState.SUCCEEDED, result, None)
        assert rec.finished_at is not None
        assert (await finish(backend, Succeeded(None))).result is None

    async def test_complete_applies_a_batch(self, backend: Backend) -> None:
        recs = await backend.enqueue([new_job() for _ in range(3)])
        claimed = {j.id: j for j in await backend.claim(claim_request(limit=3))}
        outcomes: list[Outcome] = [Succeeded(b"1"), Dead("broken"), Cancelled("no longer needed")]
        await backend.complete(
            [(lease_of(claimed[r.id]), o) for r, o in zip(recs, outcomes, strict=True)]
        )
        ok, dead, cancelled = [await must_get(backend, r.id) for r in recs]
        assert ok.state is JobState.SUCCEEDED
        assert (dead.state, dead.error) == (JobState.DEAD, "broken")
        assert (cancelled.state, cancelled.error) == (JobState.CANCELLED, "no longer needed")
        assert await backend.claim(claim_request(limit=3)) == []

    async def test_retry_at_schedules_with_backoff(self, backend: Backend) -> None:
        require(backend, "delayed")
        (rec,) = await backend.enqueue([new_job()])
        lease = lease_of(await claim_one(backend))
        await backend.complete([(lease, RetryAt(delay_s=SHORT_LEASE_S, error="boom"))])
        waiting = await must_get(backend, rec.id)
        assert (waiting.state, waiting.attempt, waiting.lease) == (JobState.SCHEDULED, 1, None)
        assert [(e.attempt, e.error) for e in waiting.errors] == [(1, "boom")]
        assert await backend.claim(claim_request()) == []
        await asyncio.sleep(EXPIRY_WAIT_S)
        assert (await claim_one(backend)).attempt == 2

    async def test_snoozed_gives_the_attempt_back(self, backend: Backend) -> None:
        (rec,) = await backend.enqueue([new_job()])
        await backend.complete([(lease_of(await claim_one(backend)), Snoozed())])
        back = await must_get(backend, rec.id)
        assert (back.state, back.attempt, back.lease) == (JobState.QUEUED, 0, None)
        again = await claim_one(backend)
        assert again.attempt == 1
        if backend.capabilities.delayed:
            await backend.complete([(lease_of(again), Snoozed(delay_s=3600))])
            later = await must_get(backend, rec.id)
            assert (later.state, later.attempt) == (JobState.SCHEDULED, 0)
            assert await backend.claim(claim_request()) == []
