"""Helpers for tests of code that uses offload: build jobs, claim, finish, inspect.

They drive a :class:`~offload.backends.base.Backend` directly, with the defaults the
conformance suite uses. This module does not import pytest (only :func:`require`, which skips a
test, needs it when it skips), so any test runner can use it; failed expectations are plain
``assert`` statements.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from offload.backends.base import Backend
from offload.job import ClaimRequest, JobRecord, Lease, NewJob, new_job_id
from offload.outcome import Outcome

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
    """Skip the test when the backend declares ``capability`` False (needs pytest then)."""
    if not getattr(backend.capabilities, capability):
        import pytest  # only here: the rest of this module works without pytest

        pytest.skip(f"backend declares {capability}=False")


async def drain_order(backend: Backend, queue: str = QUEUE) -> list[str]:
    """Claim one job at a time until none is due; the ids in claim order."""
    order: list[str] = []
    while jobs := await backend.claim(claim_request(queue, 1)):
        order.extend(j.id for j in jobs)
    return order
