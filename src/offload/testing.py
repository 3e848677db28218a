"""Testing helpers and the backend conformance suite, written once and run against every backend.

A backend's test file subclasses :class:`BackendConformance` and supplies one fixture,
``make_backend``: an async factory whose every call returns a NEW opened backend instance on
the SAME isolated storage (the fixture closes them all and removes the storage afterwards)::

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        async def make_backend(self) -> AsyncIterator[MakeBackend]:
            ...

A test of a capability the backend declares False is skipped with that reason. Lease-expiry
tests wait out short leases (``SHORT_LEASE_S``): those sleeps are the point of the test.

The helpers (:func:`new_job`, :func:`claim_one`, :func:`finish`, ...) are for users' own tests
as well.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

import pytest

from offload.backends.base import Backend
from offload.backends.common import LEASE_EXPIRED_ERROR
from offload.errors import InvalidState, QueueFull
from offload.job import (
    ClaimRequest,
    JobFilter,
    JobRecord,
    JobState,
    Lease,
    NewJob,
    WorkerInfo,
    new_job_id,
)
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Snoozed, Succeeded

MakeBackend = Callable[[], Awaitable[Backend]]
"""The ``make_backend`` fixture's value: each call opens a new instance on the same storage."""

QUEUE = "default"
SHORT_LEASE_S = 0.3
EXPIRY_WAIT_S = 0.45  # a short lease plus a margin for a networked backend's round trips
PROMPT_S = 2.0  # "promptly": generous for a loaded CI machine, far below the waits' timeouts


def new_job(
    task: str = "t",
    queue: str = QUEUE,
    args: bytes = b"{}",
    *,
    priority: int = 0,
    max_attempts: int = 3,
    delay_s: float = 0.0,
    run_at: float | None = None,
    key: str | None = None,
) -> NewJob:
    """A :class:`NewJob` with a fresh id and test-friendly defaults."""
    return NewJob(
        id=new_job_id(),
        task=task,
        queue=queue,
        args=args,
        priority=priority,
        max_attempts=max_attempts,
        delay_s=delay_s,
        run_at=run_at,
        key=key,
    )


def claim_request(
    queue: str = QUEUE, limit: int = 1, *, worker_id: str = "w1", lease_s: float = 30.0
) -> ClaimRequest:
    return ClaimRequest(queues=(queue,), limit=limit, worker_id=worker_id, lease_s=lease_s)


async def claim_one(
    backend: Backend, queue: str = QUEUE, *, worker_id: str = "w1", lease_s: float = 30.0
) -> JobRecord:
    """Claim exactly one job from ``queue``; fail the test if there is none."""
    jobs = await backend.claim(claim_request(queue, 1, worker_id=worker_id, lease_s=lease_s))
    assert len(jobs) == 1, f"expected one job claimed from {queue!r}, got {len(jobs)}"
    return jobs[0]


async def claim_ids(backend: Backend, queue: str = QUEUE, limit: int = 100) -> list[str]:
    return [j.id for j in await backend.claim(claim_request(queue, limit))]


def lease_of(rec: JobRecord) -> Lease:
    """The lease of a running record; fail the test if it holds none."""
    assert rec.lease is not None, f"job {rec.id} holds no lease (state {rec.state})"
    return rec.lease


async def must_get(backend: Backend, job_id: str) -> JobRecord:
    rec = await backend.get(job_id)
    assert rec is not None, f"job {job_id} is not stored"
    return rec


async def finish(backend: Backend, outcome: Outcome, job: NewJob | None = None) -> JobRecord:
    """Enqueue ``job`` (or a new one), claim it and complete it with ``outcome``.

    The job's queue must hold no other due job. Returns the record after completion.
    """
    job = job or new_job()
    await backend.enqueue([job])
    rec = await claim_one(backend, job.queue)
    assert rec.id == job.id, "the queue held another due job"
    await backend.complete([(lease_of(rec), outcome)])
    return await must_get(backend, job.id)


def require(backend: Backend, capability: str) -> None:
    """Skip the test when the backend declares ``capability`` False."""
    if not getattr(backend.capabilities, capability):
        pytest.skip(f"backend declares {capability}=False")


async def drain_order(backend: Backend, queue: str = QUEUE) -> list[str]:
    """Claim one job at a time until none is due; the ids in claim order."""
    order: list[str] = []
    while jobs := await backend.claim(claim_request(queue, 1)):
        order.extend(j.id for j in jobs)
    return order


class BackendConformance:
    """The contract of :class:`offload.backends.base.Backend`, as tests. Subclass it."""

    @pytest.fixture
    async def make_backend(self) -> MakeBackend:
        pytest.fail("a BackendConformance subclass must define the make_backend fixture")

    @pytest.fixture
    async def backend(self, make_backend: MakeBackend) -> Backend:
        return await make_backend()

    # -- enqueue and get -------------------------------------------------------------------

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

    # -- claim -----------------------------------------------------------------------------

    async def test_claim_leases_the_job(self, backend: Backend) -> None:
        (rec,) = await backend.enqueue([new_job()])
        got = await claim_one(backend, worker_id="w7", lease_s=20.0)
        assert (got.id, got.state, got.attempt, got.worker_id) == (
            rec.id,
            JobState.RUNNING,
            1,
            "w7",
        )
        assert got.started_at is not None and got.lease_expires_at is not None
        assert got.lease_expires_at == pytest.approx(got.started_at + 20.0, abs=1.0)
        assert lease_of(got) == Lease(job_id=rec.id, worker_id="w7", attempt=1)
        assert await backend.claim(claim_request()) == []

    async def test_claim_never_returns_more_than_asked(self, backend: Backend) -> None:
        await backend.enqueue([new_job() for _ in range(7)])
        sizes = [len(await backend.claim(claim_request(limit=n))) for n in (3, 1, 2, 5)]
        assert sizes == [3, 1, 2, 1]

    async def test_claim_only_from_the_asked_queues(self, backend: Backend) -> None:
        a, b, c = await backend.enqueue([new_job(queue=q) for q in ("qa", "qb", "qc")])
        req = ClaimRequest(queues=("qa", "qc"), limit=10, worker_id="w1")
        assert {j.id for j in await backend.claim(req)} == {a.id, c.id}
        assert (await must_get(backend, b.id)).state is JobState.QUEUED

    async def test_claim_order_priority_first(self, backend: Backend) -> None:
        require(backend, "priorities")
        ids = {}
        for name, prio in [("low", 0), ("high", 9), ("mid", 5), ("high2", 9)]:
            (rec,) = await backend.enqueue([new_job(priority=prio)])
            ids[rec.id] = name
        assert [ids[i] for i in await drain_order(backend)] == ["high", "high2", "mid", "low"]

    async def test_claim_order_run_at_then_fifo(self, backend: Backend) -> None:
        require(backend, "delayed")
        now = time.time()
        jobs = [
            new_job(run_at=now - 10),
            new_job(run_at=now - 30),
            new_job(),
            new_job(run_at=now - 20),
        ]
        await backend.enqueue(jobs)
        assert await drain_order(backend) == [jobs[i].id for i in (1, 3, 0, 2)]

    async def test_claim_order_priority_beats_run_at(self, backend: Backend) -> None:
        require(backend, "priorities")
        require(backend, "delayed")
        old, urgent = new_job(run_at=time.time() - 100), new_job(priority=5)
        await backend.enqueue([old, urgent])
        assert await drain_order(backend) == [urgent.id, old.id]

    async def test_claim_order_fifo(self, backend: Backend) -> None:
        first = [new_job() for _ in range(10)]
        await backend.enqueue(first)
        second = [new_job() for _ in range(5)]
        await backend.enqueue(second)
        assert await drain_order(backend) == [j.id for j in first + second]

    async def test_delayed_job_not_claimable_before_run_at(self, backend: Backend) -> None:
        require(backend, "delayed")
        soon, later = new_job(delay_s=SHORT_LEASE_S), new_job(run_at=time.time() + 3600)
        recs = await backend.enqueue([soon, later])
        assert [r.state for r in recs] == [JobState.SCHEDULED, JobState.SCHEDULED]
        assert recs[0].run_at == pytest.approx(recs[0].created_at + SHORT_LEASE_S, abs=0.05)
        assert await backend.claim(claim_request(limit=10)) == []
        await asyncio.sleep(EXPIRY_WAIT_S)
        assert await claim_ids(backend) == [soon.id]
        assert (await must_get(backend, later.id)).state is JobState.SCHEDULED

    async def test_concurrent_claimers_take_each_job_once(self, make_backend: MakeBackend) -> None:
        producer = await make_backend()
        ids = {r.id for r in await producer.enqueue([new_job() for _ in range(300)])}
        instances = [await make_backend() for _ in range(3)]
        claimed: list[str] = []

        async def claimer(n: int) -> None:
            backend, limit, worker = instances[n % 3], 1 + n % 5, f"w{n}"
            while True:
                jobs = await backend.claim(claim_request(limit=limit, worker_id=worker))
                assert len(jobs) <= limit
                assert all(j.worker_id == worker and j.state is JobState.RUNNING for j in jobs)
                if not jobs:
                    return
                claimed.extend(j.id for j in jobs)

        await asyncio.gather(*(claimer(n) for n in range(12)))
        twice = [i for i, n in collections.Counter(claimed).items() if n > 1]
        assert twice == [], f"{len(twice)} jobs were claimed twice"
        assert set(claimed) == ids

    # -- leases: expiry, recovery, fencing, heartbeats --------------------------------------

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

    # -- outcomes ----------------------------------------------------------------------------

    async def test_succeeded_stores_the_result_verbatim(self, backend: Backend) -> None:
        require(backend, "results")
        result = '{"caf\u00e9": [1, 2.5, null],  "n": "\\u2603"}'.encode()
        rec = await finish(backend, Succeeded(result))
        assert (rec.state, rec.result, rec.lease) == (JobState.SUCCEEDED, result, None)
        assert rec.finished_at is not None
        assert (await finish(backend, Succeeded(None))).result is None

    async def test_complete_applies_a_batch(self, backend: Backend) -> None:
        recs = await backend.enqueue([new_job() for _ in range(3)])
        claimed = {j.id: j for j in await backend.claim(claim_request(limit=3))}
        outcomes: list[Outcome] = [Succeeded(b"1"), Dead("broken"), Cancelled("no longer needed")]
        await backend.complete(
            [(lease_of(claimed[r.id]), o) for r, o in zip(recs, outcomes, strict=True)]
        )
        ok, dead, cancelled = [await must_get(backend, r.id) for r in recs]
        assert ok.state is JobState.SUCCEEDED
        assert (dead.state, dead.error) == (JobState.DEAD, "broken")
        assert (cancelled.state, cancelled.error) == (JobState.CANCELLED, "no longer needed")
        assert await backend.claim(claim_request(limit=3)) == []

    async def test_retry_at_schedules_with_backoff(self, backend: Backend) -> None:
        require(backend, "delayed")
        (rec,) = await backend.enqueue([new_job()])
        lease = lease_of(await claim_one(backend))
        await backend.complete([(lease, RetryAt(delay_s=SHORT_LEASE_S, error="boom"))])
        waiting = await must_get(backend, rec.id)
        assert (waiting.state, waiting.attempt, waiting.lease) == (JobState.SCHEDULED, 1, None)
        assert [(e.attempt, e.error) for e in waiting.errors] == [(1, "boom")]
        assert await backend.claim(claim_request()) == []
        await asyncio.sleep(EXPIRY_WAIT_S)
        assert (await claim_one(backend)).attempt == 2

    async def test_snoozed_gives_the_attempt_back(self, backend: Backend) -> None:
        (rec,) = await backend.enqueue([new_job()])
        await backend.complete([(lease_of(await claim_one(backend)), Snoozed())])
        back = await must_get(backend, rec.id)
        assert (back.state, back.attempt, back.lease) == (JobState.QUEUED, 0, None)
        again = await claim_one(backend)
        assert again.attempt == 1
        if backend.capabilities.delayed:
            await backend.complete([(lease_of(again), Snoozed(delay_s=3600))])
            later = await must_get(backend, rec.id)
            assert (later.state, later.attempt) == (JobState.SCHEDULED, 0)
            assert await backend.claim(claim_request()) == []

    # -- cancel and retry ------------------------------------------------------------------

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

    async def test_claim_by_job_ids_leases_only_those(self, backend: Backend) -> None:
        first, second, later = await backend.enqueue([new_job(), new_job(), new_job(delay_s=3600)])
        ids = (second.id, later.id, new_job_id())  # one due, one not yet, one unknown
        req = ClaimRequest(queues=("default",), limit=5, worker_id="w", job_ids=ids)
        assert [j.id for j in await backend.claim(req)] == [second.id]
        assert await backend.claim(req) == []  # already leased
        assert (await claim_one(backend)).id == first.id  # the rest is untouched

    # -- dedup and queue limits ------------------------------------------------------------

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

    # -- inspection ------------------------------------------------------------------------

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

    # -- waiting -----------------------------------------------------------------------------

    async def test_wait_for_work_returns_by_timeout(self, backend: Backend) -> None:
        started = time.monotonic()
        await backend.wait_for_work([QUEUE], 0.2)
        assert time.monotonic() - started < PROMPT_S

    async def test_wait_for_work_wakes_on_enqueue(self, make_backend: MakeBackend) -> None:
        waiter, producer = await make_backend(), await make_backend()
        require(waiter, "notify")
        started = time.monotonic()
        waiting = asyncio.create_task(waiter.wait_for_work([QUEUE], 30.0))
        await asyncio.sleep(0.1)  # let the waiter subscribe; nothing to wait on instead
        await producer.enqueue([new_job()])
        await asyncio.wait_for(waiting, PROMPT_S)
        assert time.monotonic() - started < PROMPT_S

    async def test_wait_for_work_wakes_when_a_job_is_due(self, backend: Backend) -> None:
        require(backend, "delayed")
        if backend.capabilities.notify:
            pytest.skip("the contract asks this of backends without notify only")
        await backend.enqueue([new_job(delay_s=0.2)])
        await asyncio.wait_for(backend.wait_for_work([QUEUE], 30.0), PROMPT_S)

    async def test_wait_done(self, make_backend: MakeBackend) -> None:
        waiter, worker = await make_backend(), await make_backend()
        assert await waiter.wait_done(new_job_id(), 0.1) is None
        (rec,) = await worker.enqueue([new_job()])
        lease = lease_of(await claim_one(worker))
        latest = await waiter.wait_done(rec.id, 0.2)  # times out: the latest record
        assert latest is not None and latest.state is JobState.RUNNING
        started = time.monotonic()
        waiting = asyncio.create_task(waiter.wait_done(rec.id, 30.0))
        await asyncio.sleep(0.1)
        await worker.complete([(lease, Succeeded(b"42"))])
        done = await asyncio.wait_for(waiting, PROMPT_S)
        assert done is not None and done.state is JobState.SUCCEEDED
        if worker.capabilities.results:
            assert done.result == b"42"
        assert time.monotonic() - started < PROMPT_S
        started = time.monotonic()  # a finished job is returned at once
        assert (await waiter.wait_done(rec.id, 30.0)) == done
        assert time.monotonic() - started < PROMPT_S
