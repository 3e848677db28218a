"""Retention and purge: what ``run_maintenance`` keeps by default, a job's own retention (its
task's ``retention=``) shorter than the backend's on every finishing path, and purge by age,
state and queue. Deleting past a configured backend retention, and a job's own retention
longer than it, need the backend built with one: the engines' tests do that
(``tests/test_retention.py``)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from offload.app import App
from offload.backends.base import Backend
from offload.job import KEPT_FOREVER_S, JobRecord, JobRetention, JobState, NewJob
from offload.outcome import Cancelled, Dead, Succeeded
from offload.testing.helpers import (
    EXPIRY_WAIT_S,
    SHORT_LEASE_S,
    claim_one,
    finish,
    must_get,
    new_job,
    require,
)
from offload.workflow import group
from offload.workflow.canvas import build
from offload.workflow.record import start, step_job_id

AGE_GAP_S = 0.6  # between two finishes: wider than a networked round trip on a loaded machine
GONE_AT_ONCE = JobRetention(0.0, 0.0, 0.0)  # a task's retention=0: deleted at the next prune


def own(retention: JobRetention, queue: str = "default", max_attempts: int = 3) -> NewJob:
    """A new job carrying ``retention`` as its own (as its task's ``retention=`` stamps it)."""
    job = new_job(queue=queue, max_attempts=max_attempts)
    return msgspec.structs.replace(job, retention=retention)


async def cancel_waiting(backend: Backend, job: NewJob) -> JobRecord:
    """Enqueue ``job`` and cancel it over the API (``backend.cancel``)."""
    await backend.enqueue([job])
    rec = await backend.cancel(job.id)
    assert rec is not None and rec.state is JobState.CANCELLED
    return rec


async def recover_to_dead(backend: Backend, job: NewJob) -> JobRecord:
    """Enqueue ``job`` (one attempt), claim it with a short lease and let recovery bury it."""
    await backend.enqueue([job])
    await claim_one(backend, job.queue, lease_s=SHORT_LEASE_S)
    await asyncio.sleep(EXPIRY_WAIT_S)  # the lease expiring is the point
    assert await backend.recover() == 1
    rec = await must_get(backend, job.id)
    assert rec.state is JobState.DEAD
    return rec


class RetentionConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_default_retention_keeps_recently_finished_jobs(self, backend: Backend) -> None:
        require(backend, "inspect")
        done = [
            await finish(backend, outcome)
            for outcome in (Succeeded(), Dead("broken"), Cancelled("no longer needed"))
        ]
        (waiting,) = await backend.enqueue([new_job()])
        assert await backend.run_maintenance() == 0  # the defaults keep jobs for days
        for rec in done:
            assert await must_get(backend, rec.id) == rec
        assert (await must_get(backend, waiting.id)).state is JobState.QUEUED

    async def test_a_task_retention_shorter_than_the_backends_deletes_on_every_path(
        self, backend: Backend
    ) -> None:
        require(backend, "inspect")
        gone = [
            await finish(backend, Succeeded(), own(GONE_AT_ONCE)),
            await finish(backend, Dead("broken"), own(GONE_AT_ONCE)),  # a worker's outcome
            await finish(backend, Cancelled("no"), own(GONE_AT_ONCE)),
            await cancel_waiting(backend, own(GONE_AT_ONCE)),  # a cancel over the API
            await recover_to_dead(backend, own(GONE_AT_ONCE, max_attempts=1)),  # lease lost
        ]
        kept = [  # finished as long ago, without a retention of their own for their state
            await finish(backend, Succeeded()),
            await finish(backend, Dead("broken")),
            await cancel_waiting(backend, new_job()),
            await finish(backend, Succeeded(), own(JobRetention(dead_s=0.0))),
            await finish(backend, Dead("broken"), own(JobRetention(dead_s=KEPT_FOREVER_S))),
        ]
        assert gone[0].retention == GONE_AT_ONCE  # carried from enqueue, as stored
        assert await backend.run_maintenance() == len(gone)
        assert [await backend.get(r.id) for r in gone] == [None] * len(gone)
        for rec in kept:
            assert await must_get(backend, rec.id) == rec
        assert await backend.run_maintenance() == 0

    async def test_a_cancelled_workflows_steps_keep_their_tasks_retention(
        self, backend: Backend
    ) -> None:
        require(backend, "inspect")
        require(backend, "workflows")
        app = App("memory://")  # only to shape the workflow: never opened

        @app.task(name="brief", retention=0)
        def brief() -> None:
            pass

        @app.task(name="plain")
        def plain() -> None:
            pass

        first, jobs = start(build(group(brief.si(), plain.si())))
        assert [j.retention for j in jobs] == [GONE_AT_ONCE, None]  # stamped on the steps
        wf = await backend.enqueue_workflow(first, jobs)
        await backend.cancel_workflow(wf.id, "no longer needed")
        steps = [await must_get(backend, step_job_id(wf.id, i)) for i in range(2)]
        assert [s.state for s in steps] == [JobState.CANCELLED] * 2
        assert await backend.run_maintenance() == 1
        assert await backend.get(steps[0].id) is None
        assert await must_get(backend, steps[1].id) == steps[1]

    async def test_purge_older_than_counts_from_the_finish(self, backend: Backend) -> None:
        require(backend, "inspect")
        old = await finish(backend, Dead("old"))
        await asyncio.sleep(AGE_GAP_S)  # the age between the two finishes is the point
        new = await finish(backend, Dead("new"))
        assert await backend.purge([JobState.DEAD], older_than_s=AGE_GAP_S / 2) == 1
        assert await backend.get(old.id) is None
        assert await must_get(backend, new.id) == new

    async def test_purge_by_state_and_queue_leaves_the_rest(self, backend: Backend) -> None:
        require(backend, "inspect")
        kept = [
            await finish(backend, Succeeded(), new_job(queue="keep")),
            await finish(backend, Cancelled("c"), new_job(queue="mail")),
        ]
        doomed = [await finish(backend, Succeeded(), new_job(queue="mail")) for _ in range(3)]
        (running,) = await backend.enqueue([new_job(queue="mail")])
        assert await backend.purge([JobState.SUCCEEDED, JobState.SUCCEEDED], queue="mail") == 3
        assert [await backend.get(r.id) for r in doomed] == [None] * 3
        for rec in kept:
            assert await must_get(backend, rec.id) == rec
        assert await backend.purge([], queue="mail") == 0
        assert (await must_get(backend, running.id)).state is JobState.QUEUED

    async def test_purge_refuses_active_states_and_deletes_nothing(self, backend: Backend) -> None:
        require(backend, "inspect")
        done = await finish(backend, Succeeded())
        for bad in ([JobState.RUNNING], [JobState.SUCCEEDED, JobState.SCHEDULED]):
            with pytest.raises(ValueError, match="only finished jobs"):
                await backend.purge(bad)
        assert await must_get(backend, done.id) == done
