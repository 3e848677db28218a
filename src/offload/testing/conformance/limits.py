"""Limits at claim: per-key concurrency never exceeded by concurrent claimers, a rate held
over a window, a dead claimer's slot back after its lease, fairness across keys, and no
spinning on held jobs.

Jobs carry their limits as buckets (``"<cap>/<period_ms>/<scope>"``, see
:mod:`offload.backends.limits`); these tests write them directly, as ``App`` does at enqueue.
"""

from __future__ import annotations

import asyncio
import time

from offload.backends.base import Backend
from offload.job import ClaimRequest, JobRecord, JobState, NewJob, new_job_id
from offload.outcome import Cancelled, Succeeded
from offload.testing.helpers import (
    EXPIRY_WAIT_S,
    PROMPT_S,
    QUEUE,
    SHORT_LEASE_S,
    MakeBackend,
    claim_request,
    lease_of,
    must_get,
    require,
)

RATE_PER_S = 40
RATE_WINDOW_S = 3.0  # three full windows: a claim loop that ignores the rate takes thousands


def limited(*buckets: str, queue: str = QUEUE, args: bytes = b"{}") -> NewJob:
    return NewJob(id=new_job_id(), task="t", queue=queue, args=args, limits=buckets)


def per_key(key: str, cap: int = 1) -> str:
    return f"{cap}/0/test:key={key}"


async def claim(
    backend: Backend, limit: int, *, worker_id: str = "w1", lease_s: float = 30.0
) -> list[JobRecord]:
    return await backend.claim(claim_request(QUEUE, limit, worker_id=worker_id, lease_s=lease_s))


class LimitConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    LIMIT_BURST_JOBS = 20_000  # the burst; a subclass whose cleanup is slow may lower it

    async def test_per_key_limit_takes_one_per_key_in_a_claim(self, backend: Backend) -> None:
        require(backend, "limits")
        a = await backend.enqueue([limited(per_key("a")) for _ in range(5)])
        b = await backend.enqueue([limited(per_key("b")) for _ in range(5)])
        got = await claim(backend, 10)
        assert sorted(j.id for j in got) == sorted([a[0].id, b[0].id])  # in order, per key
        assert await claim(backend, 10) == []
        held = await must_get(backend, a[1].id)
        assert (held.state, held.attempt) == (JobState.QUEUED, 0)  # no attempt used
        assert held.limits == (per_key("a"),)

    async def test_completion_and_cancel_free_the_slot(self, backend: Backend) -> None:
        require(backend, "limits")
        jobs = await backend.enqueue([limited(per_key("a")) for _ in range(3)])
        (first,) = await claim(backend, 5)
        await backend.complete([(lease_of(first), Succeeded(result=b"null"))])
        (second,) = await claim(backend, 5)
        assert second.id == jobs[1].id
        await backend.cancel(second.id)
        (third,) = await claim(backend, 5)
        assert third.id == jobs[2].id

    async def test_per_key_limit_never_exceeded_by_concurrent_claimers(
        self, make_backend: MakeBackend
    ) -> None:
        backends = [await make_backend() for _ in range(4)]
        require(backends[0], "limits")
        keys = ["k0", "k1", "k2", "k3"]
        total = 30 * len(keys)
        await backends[0].enqueue([limited(per_key(k)) for _ in range(30) for k in keys])
        holder: dict[str, str] = {}  # key -> id of the job claimed and not yet completing
        violations: list[str] = []
        done = 0

        async def claimer(b: Backend, n: int) -> None:
            nonlocal done
            idle = 0
            while done < total and idle < 200:
                got = await b.claim(claim_request(QUEUE, 3, worker_id=f"w{n}"))
                idle = 0 if got else idle + 1
                for j in got:
                    key = j.limits[0]
                    if key in holder:
                        violations.append(f"{j.id} claimed while {holder[key]} held {key}")
                    holder[key] = j.id
                await asyncio.sleep(0.001)  # let the others claim while these run
                for j in got:
                    del holder[j.limits[0]]  # completing: the backend may free it any moment
                    await b.complete([(lease_of(j), Succeeded(result=b"null"))])
                    done += 1

        await asyncio.gather(*(claimer(b, n) for n, b in enumerate(backends)))
        assert violations == []
        assert done == total

    async def test_rate_holds_over_a_window(self, make_backend: MakeBackend) -> None:
        backends = [await make_backend() for _ in range(4)]
        require(backends[0], "limits")
        bucket = f"{RATE_PER_S}/1000/test:rate"
        total = int(RATE_PER_S * (RATE_WINDOW_S + 2))
        await backends[0].enqueue([limited(bucket) for _ in range(total)])
        starts: list[float] = []
        empty = [0]
        stop = time.monotonic() + RATE_WINDOW_S + 0.5

        async def claimer(b: Backend, n: int) -> None:
            while time.monotonic() < stop:
                got = await b.claim(claim_request(QUEUE, 8, worker_id=f"w{n}"))
                starts.extend(j.started_at or 0.0 for j in got)
                if not got:
                    empty[0] += 1
                    await b.wait_for_work([QUEUE], 0.5)

        await asyncio.gather(*(claimer(b, n) for n, b in enumerate(backends)))
        t0 = min(starts)
        in_window = sum(1 for t in starts if t0 <= t < t0 + RATE_WINDOW_S)
        expected = RATE_PER_S * RATE_WINDOW_S
        assert abs(in_window - expected) <= 0.05 * expected, (in_window, expected)
        # Held claimers sleep until the window moves: a few empty claims a second each, not a
        # spin (which makes thousands).
        assert empty[0] <= 4 * 10 * (RATE_WINDOW_S + 1), empty[0]

    async def test_dead_claimers_slot_returns_after_its_lease(self, backend: Backend) -> None:
        require(backend, "limits")
        jobs = await backend.enqueue([limited(per_key("a")) for _ in range(2)])
        (lost,) = await claim(backend, 5, worker_id="dies", lease_s=SHORT_LEASE_S)
        assert await claim(backend, 5) == []
        await asyncio.sleep(EXPIRY_WAIT_S)
        assert await backend.recover() == 1
        (again,) = await claim(backend, 5)  # the slot is back (for either job of the key)
        assert lost.id == jobs[0].id and again.id in {j.id for j in jobs}
        assert (await must_get(backend, lost.id)).state in {JobState.QUEUED, JobState.RUNNING}

    async def test_burst_of_one_key_does_not_delay_another(self, backend: Backend) -> None:
        require(backend, "limits")
        await backend.enqueue([limited(per_key("A", 10)) for _ in range(self.LIMIT_BURST_JOBS)])
        b_jobs = await backend.enqueue([limited(per_key("B", 10)) for _ in range(10)])
        started = time.monotonic()
        got = await claim(backend, 20)
        took = time.monotonic() - started
        assert {j.id for j in b_jobs} <= {j.id for j in got}  # all of B in the first claim
        assert sum(1 for j in got if j.limits == (per_key("A", 10),)) == 10
        assert took < PROMPT_S
        assert await claim(backend, 20) == []  # both keys full now

    async def test_held_jobs_do_not_wake_waiters(self, backend: Backend) -> None:
        require(backend, "limits")
        await backend.enqueue([limited(per_key("a")) for _ in range(2)])
        (first,) = await claim(backend, 5)
        # A worker's idle loop (claim, then wait) over a held job: a few rounds in a second
        # (wait_for_work may return early once, as a listener is set up), not a spin.
        rounds = 0
        stop = time.monotonic() + 1.0
        while time.monotonic() < stop:
            assert await claim(backend, 5) == []
            await backend.wait_for_work([QUEUE], 0.3)
            rounds += 1
        assert rounds <= 8, rounds
        if not backend.capabilities.notify:
            return  # a polling backend learns of the completion at its next poll
        # A completion of a limited job is news: it wakes a waiter at once.
        waiter = asyncio.create_task(backend.wait_for_work([QUEUE], 5.0))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await backend.complete([(lease_of(first), Cancelled(reason="done"))])
        await asyncio.wait_for(waiter, PROMPT_S)
        assert time.monotonic() - started < PROMPT_S
        assert len(await claim(backend, 5)) == 1

    async def test_rate_and_concurrency_together(self, backend: Backend) -> None:
        require(backend, "limits")
        both = ("2/60000/test:rate2", "3/0/test:queue")
        await backend.enqueue([limited(*both) for _ in range(4)])
        first = await claim(backend, 5)
        assert len(first) == 2  # the rate allows two a minute, the cap three
        await backend.complete([(lease_of(j), Succeeded(result=b"null")) for j in first])
        assert await claim(backend, 5) == []
        req = ClaimRequest(queues=(QUEUE,), limit=5, worker_id="w2")
        assert await backend.claim(req) == []

    async def test_limit_usage_counts_running_and_waiting(self, backend: Backend) -> None:
        require(backend, "limits")
        await backend.enqueue([limited(per_key("a")) for _ in range(3)])
        await backend.enqueue([limited(per_key("b"), queue="other")])
        await claim(backend, 5)
        usage = {(u.queue, u.limit): (u.running, u.waiting) for u in await backend.limit_usage()}
        assert usage == {(QUEUE, per_key("a")): (1, 2), ("other", per_key("b")): (0, 1)}
