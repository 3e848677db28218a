"""Steering by an operator: cancel, requeue, delete, purge, pause."""

from __future__ import annotations

import pytest

from offload.backends.base import Backend
from offload.errors import InvalidState
from offload.job import ClaimRequest, JobState, new_job_id
from offload.outcome import Cancelled, Dead, Succeeded
from offload.testing.helpers import (
    MakeBackend,
    claim_one,
    claim_request,
    finish,
    lease_of,
    must_get,
    new_job,
    require,
)


class SteeringConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_cancel_waiting_jobs(self, backend: Backend) -> None:
        jobs = [new_job()]
        if backend.capabilities.delayed:
            jobs.append(new_job(delay_s=3600))
        for job in await backend.enqueue(jobs):
            cancelled = await backend.cancel(job.id)
            assert cancelled is not None and cancelled.state is JobState.CANCELLED
            assert await backend.cancel(job.id) == cancelled  # unchanged the second time
        assert await backend.claim(claim_request(limit=5)) == []
        assert await backend.cancel(new_job_id()) is None

    async def test_cancel_running_job_revokes_its_lease(self, make_backend: MakeBackend) -> None:
        worker, admin = await make_backend(), await make_backend()
        (rec,) = await worker.enqueue([new_job()])
        lease = lease_of(await claim_one(worker))
        cancelled = await admin.cancel(rec.id)
        assert cancelled is not None and cancelled.state is JobState.CANCELLED
        assert await worker.heartbeat([lease], 30.0) == set()
        await worker.complete([(lease, Succeeded(b"1"))])
        after = await must_get(admin, rec.id)
        assert (after.state, after.result, after.attempt) == (JobState.CANCELLED, None, 1)

    async def test_cancel_of_finished_job_is_invalid(self, backend: Backend) -> None:
        for outcome in (Succeeded(), Dead("gone")):
            rec = await finish(backend, outcome)
            with pytest.raises(InvalidState):
                await backend.cancel(rec.id)
            assert (await must_get(backend, rec.id)).state is rec.state

    async def test_retry_queues_dead_and_cancelled_jobs_again(self, backend: Backend) -> None:
        dead = await finish(backend, Dead("broken"))
        (queued,) = await backend.enqueue([new_job()])
        cancelled = await backend.cancel(queued.id)
        assert cancelled is not None
        for rec in (dead, cancelled):
            again = await backend.requeue(rec.id)
            assert again is not None
            assert (again.state, again.attempt, again.lease) == (JobState.QUEUED, 0, None)
            assert (await claim_one(backend)).id == rec.id
        assert await backend.requeue(new_job_id()) is None

    async def test_retry_of_active_or_succeeded_job_is_invalid(self, backend: Backend) -> None:
        ok = await finish(backend, Succeeded())
        running, queued = await backend.enqueue([new_job(), new_job()])
        assert (await claim_one(backend)).id == running.id  # enqueued first
        for job_id in (ok.id, queued.id, running.id):
            before = await must_get(backend, job_id)
            with pytest.raises(InvalidState):
                await backend.requeue(job_id)
            assert await must_get(backend, job_id) == before

    async def test_retry_refuses_a_key_another_active_job_holds(self, backend: Backend) -> None:
        require(backend, "unique")
        (old,) = await backend.enqueue([new_job(key="k")])
        await backend.cancel(old.id)
        (new,) = await backend.enqueue([new_job(key="k")])
        with pytest.raises(InvalidState):
            await backend.requeue(old.id)
        assert (await must_get(backend, old.id)).state is JobState.CANCELLED
        (same,) = await backend.enqueue([new_job(key="k")])
        assert same.id == new.id  # still at most one active job per key

    async def test_delete_spares_running_jobs(self, backend: Backend) -> None:
        done = await finish(backend, Succeeded())
        running, queued = await backend.enqueue([new_job(), new_job()])
        assert (await claim_one(backend)).id == running.id  # enqueued first
        assert await backend.delete([done.id, running.id, queued.id, new_job_id()]) == 2
        assert await backend.get(done.id) is None and await backend.get(queued.id) is None
        assert (await must_get(backend, running.id)).state is JobState.RUNNING

    async def test_purge_finished_jobs(self, backend: Backend) -> None:
        ok1 = await finish(backend, Succeeded(), new_job(queue="q1"))
        ok2 = await finish(backend, Succeeded(), new_job(queue="q2"))
        dead = await finish(backend, Dead("x"), new_job(queue="q1"))
        gone = await finish(backend, Cancelled("y"), new_job(queue="q1"))
        (waiting,) = await backend.enqueue([new_job(queue="q1")])
        for bad in ([JobState.QUEUED], [JobState.SUCCEEDED, JobState.RUNNING]):
            with pytest.raises(ValueError):
                await backend.purge(bad)
        assert await backend.purge([JobState.SUCCEEDED], older_than_s=3600) == 0
        assert await backend.purge([JobState.SUCCEEDED], queue="q2") == 1
        assert await backend.get(ok2.id) is None
        assert await backend.purge([JobState.SUCCEEDED, JobState.DEAD]) == 2
        assert await backend.get(ok1.id) is None and await backend.get(dead.id) is None
        assert await must_get(backend, gone.id) == gone
        assert (await must_get(backend, waiting.id)).state is JobState.QUEUED

    async def test_paused_queue_is_not_claimed_from(self, make_backend: MakeBackend) -> None:
        admin, worker = await make_backend(), await make_backend()
        require(admin, "pause")
        await admin.enqueue([new_job(queue="q1"), new_job(queue="q2")])
        await admin.set_paused("q1", True)
        await admin.set_paused("q1", True)
        assert await worker.paused_queues() == {"q1"}
        req = ClaimRequest(queues=("q1", "q2"), limit=5, worker_id="w1")
        assert [j.queue for j in await worker.claim(req)] == ["q2"]
        await admin.set_paused("q1", False)
        assert await worker.paused_queues() == set()
        assert [j.queue for j in await worker.claim(req)] == ["q1"]
