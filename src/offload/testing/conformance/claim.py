"""Claim: leases, limits, queues, order (priority, run_at, FIFO), delays, claim by id,
and one claimer per job."""

from __future__ import annotations

import asyncio
import collections
import time

import pytest

from offload.backends.base import Backend
from offload.job import ClaimRequest, JobState, Lease, new_job_id
from offload.testing.helpers import (
    EXPIRY_WAIT_S,
    SHORT_LEASE_S,
    MakeBackend,
    claim_ids,
    claim_one,
    claim_request,
    drain_order,
    lease_of,
    must_get,
    new_job,
    require,
)


class ClaimConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_claim_leases_the_job(self, backend: Backend) -> None:
        (rec,) = await backend.enqueue([new_job()])
        got = await claim_one(backend, worker_id="w7", lease_s=20.0)
        assert (got.id, got.state, got.attempt, got.worker_id) == (
            rec.id,
            JobState.RUNNING,
            1,
            "w7",
        )
        assert got.started_at is not None and got.lease_expires_at is not None
        assert got.lease_expires_at == pytest.approx(got.started_at + 20.0, abs=1.0)
        assert lease_of(got) == Lease(job_id=rec.id, worker_id="w7", attempt=1)
        assert await backend.claim(claim_request()) == []

    async def test_claim_never_returns_more_than_asked(self, backend: Backend) -> None:
        await backend.enqueue([new_job() for _ in range(7)])
        sizes = [len(await backend.claim(claim_request(limit=n))) for n in (3, 1, 2, 5)]
        assert sizes == [3, 1, 2, 1]

    async def test_claim_only_from_the_asked_queues(self, backend: Backend) -> None:
        a, b, c = await backend.enqueue([new_job(queue=q) for q in ("qa", "qb", "qc")])
        req = ClaimRequest(queues=("qa", "qc"), limit=10, worker_id="w1")
        assert {j.id for j in await backend.claim(req)} == {a.id, c.id}
        assert (await must_get(backend, b.id)).state is JobState.QUEUED

    async def test_claim_order_priority_first(self, backend: Backend) -> None:
        require(backend, "priorities")
        ids = {}
        for name, prio in [("low", 0), ("high", 9), ("mid", 5), ("high2", 9)]:
            (rec,) = await backend.enqueue([new_job(priority=prio)])
            ids[rec.id] = name
        assert [ids[i] for i in await drain_order(backend)] == ["high", "high2", "mid", "low"]

    async def test_claim_order_run_at_then_fifo(self, backend: Backend) -> None:
        require(backend, "delayed")
        now = time.time()
        jobs = [
            new_job(run_at=now - 10),
            new_job(run_at=now - 30),
            new_job(),
            new_job(run_at=now - 20),
        ]
        await backend.enqueue(jobs)
        assert await drain_order(backend) == [jobs[i].id for i in (1, 3, 0, 2)]

    async def test_claim_order_priority_beats_run_at(self, backend: Backend) -> None:
        require(backend, "priorities")
        require(backend, "delayed")
        old, urgent = new_job(run_at=time.time() - 100), new_job(priority=5)
        await backend.enqueue([old, urgent])
        assert await drain_order(backend) == [urgent.id, old.id]

    async def test_claim_order_fifo(self, backend: Backend) -> None:
        first = [new_job() for _ in range(10)]
        await backend.enqueue(first)
        second = [new_job() for _ in range(5)]
        await backend.enqueue(second)
        assert await drain_order(backend) == [j.id for j in first + second]

    async def test_delayed_job_not_claimable_before_run_at(self, backend: Backend) -> None:
        require(backend, "delayed")
        soon, later = new_job(delay_s=SHORT_LEASE_S), new_job(run_at=time.time() + 3600)
        recs = await backend.enqueue([soon, later])
        assert [r.state for r in recs] == [JobState.SCHEDULED, JobState.SCHEDULED]
        assert recs[0].run_at == pytest.approx(recs[0].created_at + SHORT_LEASE_S, abs=0.05)
        assert await backend.claim(claim_request(limit=10)) == []
        await asyncio.sleep(EXPIRY_WAIT_S)
        assert await claim_ids(backend) == [soon.id]
        assert (await must_get(backend, later.id)).state is JobState.SCHEDULED

    async def test_concurrent_claimers_take_each_job_once(self, make_backend: MakeBackend) -> None:
        producer = await make_backend()
        ids = {r.id for r in await producer.enqueue([new_job() for _ in range(300)])}
        instances = [await make_backend() for _ in range(3)]
        claimed: list[str] = []

        async def claimer(n: int) -> None:
            backend, limit, worker = instances[n % 3], 1 + n % 5, f"w{n}"
            while True:
                jobs = await backend.claim(claim_request(limit=limit, worker_id=worker))
                assert len(jobs) <= limit
                assert all(j.worker_id == worker and j.state is JobState.RUNNING for j in jobs)
                if not jobs:
                    return
                claimed.extend(j.id for j in jobs)

        await asyncio.gather(*(claimer(n) for n in range(12)))
        twice = [i for i, n in collections.Counter(claimed).items() if n > 1]
        assert twice == [], f"{len(twice)} jobs were claimed twice"
        assert set(claimed) == ids

    async def test_claim_by_job_ids_leases_only_those(self, backend: Backend) -> None:
        first, second, later = await backend.enqueue([new_job(), new_job(), new_job(delay_s=3600)])
        ids = (second.id, later.id, new_job_id())  # one due, one not yet, one unknown
        req = ClaimRequest(queues=("default",), limit=5, worker_id="w", job_ids=ids)
        assert [j.id for j in await backend.claim(req)] == [second.id]
        assert await backend.claim(req) == []  # already leased
        assert (await claim_one(backend)).id == first.id  # the rest is untouched
