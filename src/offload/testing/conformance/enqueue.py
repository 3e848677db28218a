"""Enqueue and get: records as given, args verbatim, dedup by key, queue depth limits."""

from __future__ import annotations

import time

import pytest

from offload.backends.base import Backend
from offload.errors import QueueFull
from offload.job import JobState, new_job_id
from offload.outcome import Succeeded
from offload.testing.helpers import (
    QUEUE,
    claim_one,
    claim_request,
    finish,
    must_get,
    new_job,
    require,
)


class EnqueueConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_enqueue_returns_records_in_order(self, backend: Backend) -> None:
        jobs = [new_job(task=f"t{i}", args=b'{"i": %d}' % i, max_attempts=i + 1) for i in range(5)]
        recs = await backend.enqueue(jobs)
        assert [r.id for r in recs] == [j.id for j in jobs]
        for job, rec in zip(jobs, recs, strict=True):
            assert (rec.task, rec.queue, rec.args) == (job.task, job.queue, job.args)
            assert (rec.state, rec.attempt, rec.max_attempts) == (
                JobState.QUEUED,
                0,
                job.max_attempts,
            )
            assert abs(rec.created_at - time.time()) < 60
            assert await backend.get(job.id) == rec
        assert await backend.enqueue([]) == []

    async def test_get_unknown_is_none(self, backend: Backend) -> None:
        assert await backend.get(new_job_id()) is None

    async def test_args_stored_and_claimed_verbatim(self, backend: Backend) -> None:
        # Decoding is the worker's business (it turns bad args into Dead); the backend must
        # hand back exactly the bytes it was given, even when they are not JSON.
        payloads = [b"not json", b'{"a" : 1,  "b": [ ]}', '{"s": "caf\u00e9 \u2603"}'.encode()]
        recs = await backend.enqueue([new_job(args=p) for p in payloads])
        assert [r.args for r in recs] == payloads
        claimed = await backend.claim(claim_request(limit=3))
        assert sorted(j.args for j in claimed) == sorted(payloads)
        for rec in recs:
            assert (await must_get(backend, rec.id)).args == rec.args

    async def test_dedup_returns_the_active_job(self, backend: Backend) -> None:
        require(backend, "unique")
        (first,) = await backend.enqueue([new_job(key="k")])
        dup, other, dup2 = await backend.enqueue(
            [new_job(key="k"), new_job(key="k2"), new_job(key="k2")]
        )
        assert dup.id == first.id
        assert dup2.id == other.id  # two of one key in a batch collapse to the first
        await claim_one(backend)  # running is still active
        (dup3,) = await backend.enqueue([new_job(key="k")])
        assert dup3.id == first.id
        assert sum((await backend.counts()).get(QUEUE, {}).values()) == 2

    async def test_finished_job_frees_its_key(self, backend: Backend) -> None:
        require(backend, "unique")
        done = await finish(backend, Succeeded(), new_job(key="k"))
        (again,) = await backend.enqueue([new_job(key="k")])
        assert again.id != done.id and again.state is JobState.QUEUED
        assert (await backend.cancel(again.id)) is not None
        (third,) = await backend.enqueue([new_job(key="k")])
        assert third.id not in (done.id, again.id)

    async def test_queue_limit_is_atomic(self, backend: Backend) -> None:
        limits = {"q": 3}
        await backend.enqueue([new_job(queue="q", key="k"), new_job(queue="q")], limits=limits)
        rejected = [new_job(queue="other"), new_job(queue="q"), new_job(queue="q")]
        with pytest.raises(QueueFull) as info:
            await backend.enqueue(rejected, limits=limits)
        assert (info.value.queue, info.value.limit) == ("q", 3)
        for job in rejected:  # all or nothing: not even the job for the other queue
            assert await backend.get(job.id) is None
        await backend.enqueue([new_job(queue="q")], limits=limits)
        with pytest.raises(QueueFull):
            await backend.enqueue([new_job(queue="q")], limits=limits)
        if backend.capabilities.unique:  # a deduplicated job does not count
            await backend.enqueue([new_job(queue="q", key="k")], limits=limits)
        await claim_one(backend, "q")  # a running job is no longer waiting
        await backend.enqueue([new_job(queue="q")], limits=limits)
        await backend.enqueue([new_job(queue="unlimited") for _ in range(5)], limits=limits)

    async def test_dedup_keys_are_scoped_by_queue(self, backend: Backend) -> None:
        require(backend, "unique")
        a, b, a2 = await backend.enqueue(
            [
                new_job(queue="qa", key="k"),
                new_job(queue="qb", key="k"),
                new_job(queue="qa", key="k"),
            ]
        )
        assert a.id != b.id and a2.id == a.id
        assert (await must_get(backend, b.id)).queue == "qb"
