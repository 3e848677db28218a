"""Enqueue from sync code (:class:`~offload.backends.base.SyncEnqueue`): the contract of
``enqueue``, kept by ``enqueue_now`` on a thread of its own.

Each test calls ``enqueue_now`` from a worker thread (as a sync view does), never from the
loop the backend lives on. A backend without the ability is skipped: the app takes the async
path for it, which the rest of the suite covers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

import pytest

from offload.backends.base import Backend, SyncEnqueue
from offload.errors import QueueFull
from offload.job import JobRecord, NewJob
from offload.testing.helpers import (
    PROMPT_S,
    QUEUE,
    MakeBackend,
    claim_request,
    must_get,
    new_job,
    require,
)

THREADS = 8
PER_THREAD = 10


def sync_path(backend: Backend) -> SyncEnqueue:
    if not isinstance(backend, SyncEnqueue):
        pytest.skip(f"{type(backend).__name__} has no sync enqueue (the app uses the async one)")
    return backend


async def enqueue_now(
    backend: Backend, jobs: Sequence[NewJob], limits: Mapping[str, int] | None = None
) -> list[JobRecord]:
    """``enqueue_now`` from a thread of its own, as a sync caller makes it."""
    sync = sync_path(backend)
    return await asyncio.to_thread(lambda: sync.enqueue_now(jobs, limits=limits))


async def claim_within(backend: Backend, queue: str, want: int, within_s: float) -> list[str]:
    """Claim until ``want`` jobs came or ``within_s`` passed, waiting on ``wait_for_work``
    between tries (a broker form publishes a sync enqueue's messages just after it returns)."""
    got: list[str] = []
    deadline = time.monotonic() + within_s
    while len(got) < want and time.monotonic() < deadline:
        recs = await backend.claim(claim_request(queue, limit=want - len(got)))
        got += [r.id for r in recs]
        if len(got) < want:
            await backend.wait_for_work([queue], 0.1)
    return got


class SyncEnqueueConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_sync_enqueue_stores_before_returning(
        self, backend: Backend, make_backend: MakeBackend
    ) -> None:
        jobs = [new_job(task=f"t{i}", args=b'{"i": %d}' % i) for i in range(3)]
        recs = await enqueue_now(backend, jobs)
        assert [r.id for r in recs] == [j.id for j in jobs]
        other = await make_backend()  # another instance: its own connections, nothing cached
        for job, rec in zip(jobs, recs, strict=True):
            assert (rec.task, rec.args, rec.queue) == (job.task, job.args, job.queue)
            assert await other.get(job.id) == rec
        assert await enqueue_now(backend, []) == []

    async def test_sync_enqueue_is_claimable_and_wakes_a_waiter(
        self, backend: Backend, make_backend: MakeBackend
    ) -> None:
        require(backend, "notify")
        worker = await make_backend()
        waiting = asyncio.create_task(worker.wait_for_work([QUEUE], 30.0))
        await asyncio.sleep(0.2)  # let it start waiting (PostgreSQL sets up its LISTEN)
        started = time.monotonic()
        (rec,) = await enqueue_now(backend, [new_job()])
        await asyncio.wait_for(waiting, PROMPT_S)
        assert time.monotonic() - started < PROMPT_S
        assert await claim_within(worker, QUEUE, 1, PROMPT_S) == [rec.id]

    async def test_sync_enqueue_dedups_by_key(self, backend: Backend) -> None:
        require(backend, "unique")
        (first,) = await backend.enqueue([new_job(key="k")])
        dup, other, dup2 = await enqueue_now(
            backend, [new_job(key="k"), new_job(key="k2"), new_job(key="k2")]
        )
        assert dup.id == first.id and dup2.id == other.id
        (again,) = await backend.enqueue([new_job(key="k2")])
        assert again.id == other.id  # the async path sees what the sync one stored

    async def test_sync_enqueue_queue_limit_stores_nothing(self, backend: Backend) -> None:
        limits = {"q": 2}
        await enqueue_now(backend, [new_job(queue="q")], limits)
        rejected = [new_job(queue="other"), new_job(queue="q"), new_job(queue="q")]
        with pytest.raises(QueueFull):
            await enqueue_now(backend, rejected, limits)
        for job in rejected:
            assert await backend.get(job.id) is None
        await enqueue_now(backend, [new_job(queue="q")], limits)

    async def test_sync_enqueue_from_many_threads(self, backend: Backend) -> None:
        sync = sync_path(backend)
        unique = backend.capabilities.unique
        barrier = threading.Barrier(THREADS, timeout=PROMPT_S * 5)
        results: list[list[JobRecord]] = []
        keyed: list[JobRecord] = []
        errors: list[BaseException] = []

        def producer(n: int) -> None:
            try:
                barrier.wait()  # all at once: group commits, pooled connections, one script
                out = [
                    sync.enqueue_now([new_job(args=b'{"n": %d}' % n)])[0] for _ in range(PER_THREAD)
                ]
                results.append(out)
                if unique:
                    keyed.extend(sync.enqueue_now([new_job(queue="keyed", key="one")]))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()

        def join_all() -> None:
            for t in threads:
                t.join()

        await asyncio.to_thread(join_all)
        assert not errors, errors
        ids = [r.id for recs in results for r in recs]
        assert len(set(ids)) == THREADS * PER_THREAD
        for job_id in ids:
            assert (await must_get(backend, job_id)).queue == QUEUE
        if unique:  # racing producers of one key: one job, the same one to all of them
            assert len({r.id for r in keyed}) == 1
            assert sum((await backend.counts()).get("keyed", {}).values()) == 1
