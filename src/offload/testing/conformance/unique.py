"""Uniqueness with a window (throttle) and replace-on-conflict (debounce), on enqueue."""

from __future__ import annotations

import asyncio

import msgspec

from offload.backends.base import Backend
from offload.backends.unique import outcome_of
from offload.job import JobState, NewJob
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

WINDOW_S = 0.5  # a short window the test waits out; the wait is the point of the test


def keyed(
    key: str = "k",
    args: bytes = b"{}",
    *,
    unique_for: float | None = None,
    replace: bool = False,
    delay_s: float = 0.0,
    priority: int = 0,
) -> NewJob:
    job = new_job(key=key, args=args, delay_s=delay_s, priority=priority)
    return msgspec.structs.replace(
        job, unique_for=unique_for, on_conflict="replace" if replace else "keep"
    )


class UniqueConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_unique_for_blocks_a_finished_key_until_the_window_ends(
        self, backend: Backend
    ) -> None:
        require(backend, "unique")
        done = await finish(backend, Succeeded(), keyed(unique_for=WINDOW_S))
        again = keyed(unique_for=WINDOW_S)
        (rec,) = await backend.enqueue([again])
        assert rec.id == done.id and rec.state is JobState.SUCCEEDED
        assert outcome_of(again, rec) == "existing"
        # A key without a window is free once its job finished (today's rule, unchanged).
        plain = keyed()
        (free,) = await backend.enqueue([plain])
        assert free.id == plain.id
        await finish_existing(backend, free.id)
        await asyncio.sleep(WINDOW_S + 0.2)
        late = keyed(unique_for=WINDOW_S)
        (rec,) = await backend.enqueue([late])
        assert rec.id == late.id and outcome_of(late, rec) == "created"

    async def test_unique_for_dedups_active_and_batch(self, backend: Backend) -> None:
        require(backend, "unique")
        first, second, other = keyed(unique_for=60), keyed(unique_for=60), keyed("k2")
        recs = await backend.enqueue([first, second, other])
        assert [r.id for r in recs] == [first.id, first.id, other.id]
        assert [outcome_of(j, r) for j, r in zip([first, second, other], recs, strict=True)] == [
            "created",
            "existing",
            "created",
        ]
        await claim_one(backend)  # running still holds it
        (rec,) = await backend.enqueue([keyed(unique_for=60)])
        assert rec.id in (first.id, other.id)
        assert sum((await backend.counts()).get(QUEUE, {}).values()) == 2

    async def test_replace_updates_a_waiting_job(self, backend: Backend) -> None:
        require(backend, "unique")
        (held,) = await backend.enqueue([keyed(args=b'{"v": 1}', delay_s=3600)])
        assert held.state is JobState.SCHEDULED
        new = keyed(args=b'{"v": 2}', replace=True, priority=5)
        (rec,) = await backend.enqueue([new])
        assert rec.id == held.id and outcome_of(new, rec) == "replaced"
        assert (rec.args, rec.state, rec.priority) == (b'{"v": 2}', JobState.QUEUED, 5)
        assert await must_get(backend, held.id) == rec
        claimed = await claim_one(backend)  # due now, and claimable now
        assert (claimed.id, claimed.args) == (held.id, b'{"v": 2}')

    async def test_replace_can_push_a_job_later(self, backend: Backend) -> None:
        require(backend, "unique")
        (held,) = await backend.enqueue([keyed(args=b'{"v": 1}')])
        (rec,) = await backend.enqueue([keyed(args=b'{"v": 2}', replace=True, delay_s=3600)])
        assert (rec.id, rec.state, rec.args) == (held.id, JobState.SCHEDULED, b'{"v": 2}')
        assert rec.run_at > held.run_at + 3000
        claimed = await backend.claim(claim_request(limit=10))
        assert claimed == [], "a job moved into the future must not be claimed now"

    async def test_replace_keeps_a_running_or_finished_job(self, backend: Backend) -> None:
        require(backend, "unique")
        (held,) = await backend.enqueue([keyed(args=b'{"v": 1}', unique_for=60)])
        running = await claim_one(backend)
        new = keyed(args=b'{"v": 2}', replace=True, unique_for=60)
        (rec,) = await backend.enqueue([new])
        assert (rec.id, rec.state, rec.args) == (held.id, JobState.RUNNING, b'{"v": 1}')
        assert outcome_of(new, rec) == "existing"
        assert running.lease is not None
        await backend.complete([(running.lease, Succeeded())])
        (rec,) = await backend.enqueue([keyed(args=b'{"v": 3}', replace=True, unique_for=60)])
        assert (rec.id, rec.state, rec.args) == (held.id, JobState.SUCCEEDED, b'{"v": 1}')

    async def test_replace_never_touches_another_tasks_job(self, backend: Backend) -> None:
        require(backend, "unique")
        (held,) = await backend.enqueue([keyed(args=b'{"v": 1}', delay_s=3600)])
        other = msgspec.structs.replace(keyed(args=b'{"w": 2}', replace=True), task="other")
        (rec,) = await backend.enqueue([other])
        assert (rec.id, rec.task, rec.args) == (held.id, "t", b'{"v": 1}')
        assert outcome_of(other, rec) == "existing"
        assert (await must_get(backend, held.id)).args == b'{"v": 1}'

    async def test_replace_in_one_batch_keeps_the_last_content(self, backend: Backend) -> None:
        require(backend, "unique")
        jobs = [keyed(args=b'{"v": %d}' % i, replace=True) for i in range(3)]
        recs = await backend.enqueue(jobs)
        assert {r.id for r in recs} == {jobs[0].id}
        assert (await must_get(backend, jobs[0].id)).args == b'{"v": 2}'
        outcomes = [outcome_of(j, r) for j, r in zip(jobs, recs, strict=True)]
        assert outcomes == ["created", "replaced", "replaced"]
        kept = [keyed("k3", args=b'{"v": %d}' % i) for i in range(2)]
        recs = await backend.enqueue(kept)
        assert (await must_get(backend, kept[0].id)).args == b'{"v": 0}'


async def finish_existing(backend: Backend, job_id: str) -> None:
    rec = await claim_one(backend)
    assert rec.id == job_id and rec.lease is not None
    await backend.complete([(rec.lease, Succeeded())])
