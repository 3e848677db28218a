"""Fair claims across keys (docs/limits.md, "Fairness"): a burst of one key does not delay
another beyond one claim round, claims of one job rotate among keys, priority still wins, jobs
without a key are one more key, and concurrent claimers never take a job twice.

Jobs carry their fair key as the first entry of their limits (``fair:tenant="A"``, see
:mod:`offload.backends.limits`); these tests write it directly, as ``App`` does at enqueue.
"""

from __future__ import annotations

import asyncio

import msgspec

from offload.backends.base import Backend
from offload.backends.limits import FAIR_PREFIX
from offload.job import JobRecord, NewJob, new_job_id
from offload.outcome import RetryAt, Succeeded
from offload.testing.helpers import QUEUE, MakeBackend, claim_request, lease_of, require


def fair(key: str | None, *buckets: str, priority: int = 0) -> NewJob:
    limits = ((FAIR_PREFIX + f'tenant="{key}"',) if key is not None else ()) + buckets
    return NewJob(
        id=new_job_id(), task="t", queue=QUEUE, args=b"{}", limits=limits, priority=priority
    )


def key_of(job: JobRecord) -> str | None:
    head = job.limits[0] if job.limits else ""
    return head[len(FAIR_PREFIX) :] if head.startswith(FAIR_PREFIX) else None


async def claim(backend: Backend, limit: int, worker_id: str = "w1") -> list[JobRecord]:
    return await backend.claim(claim_request(QUEUE, limit, worker_id=worker_id))


class FairnessConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    FAIR_BURST_JOBS = 20_000  # the burst; a subclass whose cleanup is slow may lower it

    async def test_burst_of_one_key_waits_its_turn(self, backend: Backend) -> None:
        require(backend, "fairness")
        n = self.FAIR_BURST_JOBS
        for start in range(0, n, 5_000):  # bulk, in batches an engine takes in one call
            await backend.enqueue([fair("A") for _ in range(min(5_000, n - start))])
        b_jobs = await backend.enqueue([fair("B") for _ in range(10)])
        got = await claim(backend, 100)
        assert len(got) == 100
        # With no limit at all, all of B's in the first claim after them: A's and B's alternate.
        assert {j.id for j in b_jobs} <= {j.id for j in got}
        assert sum(1 for j in got if key_of(j) == 'tenant="A"') == 90

    async def test_claims_of_one_rotate_among_keys(self, backend: Backend) -> None:
        require(backend, "fairness")
        await backend.enqueue([fair("A") for _ in range(6)])
        await backend.enqueue([fair("B") for _ in range(2)])
        await backend.enqueue([fair("C") for _ in range(2)])
        order = []
        while got := await claim(backend, 1):
            order.append(key_of(got[0]))
        a, b, c = 'tenant="A"', 'tenant="B"', 'tenant="C"'
        # A served first (its head is oldest), then the keys never served, then round robin.
        assert order == [a, b, c, a, b, c, a, a, a, a], order

    async def test_a_key_whose_lane_emptied_comes_first_again(self, backend: Backend) -> None:
        require(backend, "fairness")
        await backend.enqueue([fair("A") for _ in range(5)])
        await backend.enqueue([fair("B")])
        await backend.enqueue([fair("C") for _ in range(3)])
        first = [key_of((await claim(backend, 1))[0]) for _ in range(3)]
        assert first == ['tenant="A"', 'tenant="B"', 'tenant="C"']
        (again,) = await backend.enqueue([fair("B")])  # B's lane emptied: its turn is forgotten
        (got,) = await claim(backend, 1)
        assert got.id == again.id  # before A (served longer ago than B was) and C

    async def test_priority_wins_over_fairness(self, backend: Backend) -> None:
        require(backend, "fairness")
        await backend.enqueue([fair("A") for _ in range(5)])
        urgent = await backend.enqueue([fair("A", priority=5) for _ in range(3)])
        await backend.enqueue([fair("B") for _ in range(2)])
        got = await claim(backend, 5)
        # All of A's urgent ones first; then rounds: A had three, so B's two before A's fourth.
        assert {j.id for j in urgent} <= {j.id for j in got}
        assert sorted(key_of(j) or "" for j in got) == ['tenant="A"'] * 3 + ['tenant="B"'] * 2

    async def test_jobs_without_a_key_are_one_more_key(self, backend: Backend) -> None:
        require(backend, "fairness")
        await backend.enqueue([fair("A") for _ in range(20)])
        # A claim first learns that the queue holds fair jobs (PostgreSQL's ordinary claim takes
        # jobs without limits before it hands over to the fair one; docs/limits.md).
        assert [key_of(j) for j in await claim(backend, 2)] == ['tenant="A"'] * 2
        plain = await backend.enqueue([fair(None) for _ in range(20)])
        got = await claim(backend, 10)  # (the jobs of one claim come in any order)
        assert sum(1 for j in got if key_of(j) is None) == 5
        assert {j.id for j in got if key_of(j) is None} == {j.id for j in plain[:5]}  # FIFO

    async def test_limits_still_hold_fair_jobs(self, backend: Backend) -> None:
        require(backend, "fairness")
        await backend.enqueue([fair("A", "1/0/test:one-a") for _ in range(5)])
        await backend.enqueue([fair("B") for _ in range(3)])
        got = await claim(backend, 10)
        assert sorted(key_of(j) or "" for j in got) == ['tenant="A"'] + ['tenant="B"'] * 3
        assert await claim(backend, 10) == []  # A's next is held by its limit of one

    async def test_a_limited_only_claim_takes_no_job_without_limits(self, backend: Backend) -> None:
        """``ClaimRequest.limited_only`` (a broker's state store) holds on the fair path too:
        the lane of the jobs without a key gives only those that carry limits."""
        require(backend, "fairness")
        (plain,) = await backend.enqueue([fair(None)])
        (capped,) = await backend.enqueue([fair(None, "2/0/test:lo")])
        (keyed,) = await backend.enqueue([fair("A")])
        req = msgspec.structs.replace(claim_request(QUEUE, 10), limited_only=True)
        got = await backend.claim(req)
        assert sorted(j.id for j in got) == sorted([capped.id, keyed.id])
        assert [j.id for j in await claim(backend, 10)] == [plain.id]

    async def test_retried_and_cancelled_fair_jobs(self, backend: Backend) -> None:
        require(backend, "fairness")
        a = await backend.enqueue([fair("A") for _ in range(3)])
        (b,) = await backend.enqueue([fair("B")])
        await backend.cancel(a[1].id)  # a cancelled waiting job neither runs nor blocks its key
        (first,) = await claim(backend, 1)
        assert first.id == a[0].id
        await backend.complete([(lease_of(first), RetryAt(delay_s=0.0, error="again"))])
        order = []
        while got := await claim(backend, 1):
            order.append(got[0].id)
        assert order == [b.id, a[2].id, a[0].id]  # B's turn; then A's, its retry last

    async def test_concurrent_claimers_take_each_job_once(self, make_backend: MakeBackend) -> None:
        backends = [await make_backend() for _ in range(4)]
        require(backends[0], "fairness")
        keys = [f"k{i}" for i in range(8)]
        total = 25 * len(keys)
        await backends[0].enqueue([fair(k) for _ in range(25) for k in keys])
        seen: list[str] = []

        async def claimer(b: Backend, n: int) -> None:
            idle = 0
            while len(seen) < total and idle < 50:
                got = await claim(b, 7, worker_id=f"w{n}")
                idle = 0 if got else idle + 1
                seen.extend(j.id for j in got)
                await asyncio.sleep(0)
                await b.complete([(lease_of(j), Succeeded(result=b"null")) for j in got])

        await asyncio.gather(*(claimer(b, n) for n, b in enumerate(backends)))
        assert len(seen) == total
        assert len(set(seen)) == total  # no job claimed twice
