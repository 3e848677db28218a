"""Retention and purge: what ``run_maintenance`` keeps by default, and purge by age, state and
queue. Deleting past a configured retention needs the backend built with it: the engines'
tests do that (``tests/test_retention.py``)."""

from __future__ import annotations

import asyncio

import pytest

from offload.backends.base import Backend
from offload.job import JobState
from offload.outcome import Cancelled, Dead, Succeeded
from offload.testing.helpers import finish, must_get, new_job, require

AGE_GAP_S = 0.6  # between two finishes: wider than a networked round trip on a loaded machine


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
