"""Leases: expiry and recovery, fencing of stale leases, heartbeats."""

from __future__ import annotations

import asyncio

from offload.backends.base import Backend
from offload.backends.common import LEASE_EXPIRED_ERROR
from offload.job import JobState, Lease, new_job_id
from offload.outcome import Dead, Succeeded
from offload.testing.helpers import (
    EXPIRY_WAIT_S,
    SHORT_LEASE_S,
    MakeBackend,
    claim_one,
    claim_request,
    finish,
    lease_of,
    must_get,
    new_job,
)


class LeaseConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_expired_lease_is_recovered_and_the_attempt_counts(
        self, make_backend: MakeBackend
    ) -> None:
        b1, b2 = await make_backend(), await make_backend()
        (rec,) = await b1.enqueue([new_job()])
        await claim_one(b1, lease_s=SHORT_LEASE_S)
        assert await b1.recover() == 0  # the lease still holds
        await asyncio.sleep(EXPIRY_WAIT_S)
        assert sum(await asyncio.gather(b1.recover(), b2.recover())) == 1
        back = await must_get(b2, rec.id)
        assert (back.state, back.attempt) == (JobState.QUEUED, 1)
        assert [(e.attempt, e.error) for e in back.errors] == [(1, LEASE_EXPIRED_ERROR)]
        again = await claim_one(b2, worker_id="w2")
        assert again.attempt == 2

    async def test_stale_lease_is_fenced_off(self, backend: Backend) -> None:
        (rec,) = await backend.enqueue([new_job()])
        old = lease_of(await claim_one(backend, lease_s=SHORT_LEASE_S))
        await asyncio.sleep(EXPIRY_WAIT_S)
        assert await backend.recover() == 1
        new = lease_of(await claim_one(backend, worker_id="w2"))
        intruder = Lease(job_id=rec.id, worker_id="intruder", attempt=new.attempt)
        await backend.complete([(old, Succeeded(b"1")), (intruder, Dead("x"))])
        now = await must_get(backend, rec.id)
        assert (now.state, now.worker_id, now.attempt, now.result) == (
            JobState.RUNNING,
            "w2",
            2,
            None,
        )
        assert await backend.heartbeat([old, intruder], 30.0) == set()
        assert await backend.heartbeat([old, new], 30.0) == {rec.id}
        await backend.complete([(new, Succeeded(b"2"))])
        assert (await must_get(backend, rec.id)).result == b"2"

    async def test_dead_after_max_attempts_of_lost_workers(self, backend: Backend) -> None:
        (rec,) = await backend.enqueue([new_job(max_attempts=2)])
        for attempt in (1, 2):
            got = await claim_one(backend, worker_id=f"w{attempt}", lease_s=SHORT_LEASE_S)
            assert got.attempt == attempt
            await asyncio.sleep(EXPIRY_WAIT_S)
            assert await backend.recover() == 1
        dead = await must_get(backend, rec.id)
        assert (dead.state, dead.attempt) == (JobState.DEAD, 2)
        assert dead.error and dead.finished_at is not None
        assert dead.lease is None
        assert await backend.claim(claim_request()) == []

    async def test_heartbeat_keeps_a_lease_alive(self, make_backend: MakeBackend) -> None:
        b1, b2 = await make_backend(), await make_backend()
        (rec,) = await b1.enqueue([new_job()])
        lease = lease_of(await claim_one(b1, lease_s=SHORT_LEASE_S))
        for _ in range(3):  # 0.45 s in all: well past the original expiry
            await asyncio.sleep(SHORT_LEASE_S / 2)
            assert await b1.heartbeat([lease], SHORT_LEASE_S) == {rec.id}
        assert await b2.recover() == 0
        assert await b2.claim(claim_request()) == []
        await b1.complete([(lease, Succeeded())])
        assert (await must_get(b2, rec.id)).state is JobState.SUCCEEDED

    async def test_heartbeat_of_unknown_or_finished_job(self, backend: Backend) -> None:
        done = await finish(backend, Succeeded())
        ghost = Lease(job_id=new_job_id(), worker_id="w1", attempt=1)
        stale = Lease(job_id=done.id, worker_id="w1", attempt=1)
        assert await backend.heartbeat([ghost, stale], 30.0) == set()
        await backend.complete([(ghost, Succeeded()), (stale, Dead("late"))])
        assert (await must_get(backend, done.id)).state is JobState.SUCCEEDED
