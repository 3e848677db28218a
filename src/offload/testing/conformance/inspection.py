"""Inspection: listing with filters and pages, counts, workers."""

from __future__ import annotations

import asyncio
import time

from offload.backends.base import Backend
from offload.job import JobFilter, JobRecord, JobState, WorkerInfo
from offload.testing.helpers import (
    EXPIRY_WAIT_S,
    QUEUE,
    SHORT_LEASE_S,
    MakeBackend,
    claim_one,
    new_job,
    require,
)


class InspectionConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_list_jobs_filters(self, backend: Backend) -> None:
        require(backend, "inspect")
        early = await backend.enqueue(
            [
                new_job(task="alpha", queue="q1", args=b'{"user": "needle-1"}'),
                new_job(task="beta", queue="q2", args=b'{"user": "hay"}'),
            ]
        )
        await asyncio.sleep(0.05)  # two distinct creation times on the backend's clock
        late = await backend.enqueue(
            [
                new_job(task="alpha", queue="q2", args=b'{"user": "needle-2"}'),
                new_job(task="beta", queue="q1", args=b'{"user": "hay"}'),
            ]
        )
        running = await claim_one(backend, "q1")
        a1, b2, a2, b1 = (r.id for r in early + late)

        async def ids(flt: JobFilter) -> set[str]:
            return {j.id for j in (await backend.list_jobs(flt)).jobs}

        assert await ids(JobFilter()) == {a1, b2, a2, b1}
        assert await ids(JobFilter(state=JobState.RUNNING)) == {running.id} == {a1}
        assert await ids(JobFilter(state=JobState.QUEUED)) == {b2, a2, b1}
        assert await ids(JobFilter(queue="q2")) == {b2, a2}
        assert await ids(JobFilter(task="alpha")) == {a1, a2}
        assert await ids(JobFilter(args_contains="needle")) == {a1, a2}
        assert await ids(JobFilter(task="beta", queue="q1")) == {b1}
        cut = (max(r.created_at for r in early) + min(r.created_at for r in late)) / 2
        assert await ids(JobFilter(created_after=cut)) == {a2, b1}
        assert await ids(JobFilter(created_before=cut)) == {a1, b2}

    async def test_list_jobs_pages_without_gaps_or_duplicates(self, backend: Backend) -> None:
        require(backend, "inspect")
        stored = []
        for _ in range(4):
            stored += await backend.enqueue([new_job(queue=q) for q in ("q1", "q2") * 3])
        for queue, expected in [(None, stored), ("q2", [r for r in stored if r.queue == "q2"])]:
            seen: list[JobRecord] = []
            cursor: str | None = None
            for _ in range(100):
                page = await backend.list_jobs(JobFilter(queue=queue, limit=5, cursor=cursor))
                assert len(page.jobs) <= 5
                seen += page.jobs
                if (cursor := page.next_cursor) is None:
                    break
            assert [j.id for j in seen] == [
                r.id for r in sorted(expected, key=lambda r: (r.created_at, r.id), reverse=True)
            ]

    async def test_counts_by_queue_and_state(self, backend: Backend) -> None:
        require(backend, "inspect")
        await backend.enqueue([new_job(queue="q1") for _ in range(3)] + [new_job(queue="q2")])
        await claim_one(backend, "q1")
        expected = {"q1": {JobState.QUEUED: 2, JobState.RUNNING: 1}, "q2": {JobState.QUEUED: 1}}
        if backend.capabilities.delayed:
            await backend.enqueue([new_job(queue="q2", delay_s=3600)])
            expected["q2"][JobState.SCHEDULED] = 1
        counts = await backend.counts()
        nonzero = {q: {s: n for s, n in by.items() if n} for q, by in counts.items()}
        assert {q: by for q, by in nonzero.items() if by} == expected

    async def test_workers_are_reported_and_forgotten(self, make_backend: MakeBackend) -> None:
        b1, b2 = await make_backend(), await make_backend()
        require(b1, "inspect")

        def info(worker_id: str) -> WorkerInfo:
            return WorkerInfo(
                id=worker_id,
                host="h",
                pid=1,
                queues=(QUEUE,),
                concurrency=4,
                busy=1,
                started_at=time.time(),
            )

        await b1.report_worker(info("stays"), 30.0)
        await b1.report_worker(info("leaves"), 30.0)
        await b1.report_worker(info("lapses"), SHORT_LEASE_S)
        seen = {w.id: w for w in await b2.workers()}
        assert set(seen) == {"stays", "leaves", "lapses"}
        assert seen["stays"].last_seen_at > 0 and seen["stays"].concurrency == 4
        await b2.remove_worker("leaves")
        await asyncio.sleep(EXPIRY_WAIT_S)
        assert [w.id for w in await b1.workers()] == ["stays"]
