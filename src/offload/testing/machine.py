"""A hypothesis state machine that drives a backend with the job operations and checks it
against a small pure-Python model after every step.

:func:`backend_machine` is backend-neutral: give it a factory of async context managers, each
of which opens a backend on fresh, isolated storage and removes that storage on exit (one per
example), and run the class it returns with ``hypothesis.stateful.run_state_machine_as_test``
or its ``TestCase``. Needs hypothesis and pytest.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from offload.backends.base import Backend
from offload.backends.common import LEASE_EXPIRED_ERROR
from offload.errors import InvalidState
from offload.job import ACTIVE_STATES, ClaimRequest, JobRecord, JobState, Lease
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Snoozed, Succeeded
from offload.testing.helpers import QUEUE, new_job

T = TypeVar("T")

# lose_worker's lease, and how long it waits before recovery: past the lease on the backend's
# clock (on this machine), with room for rounding to milliseconds.
LOST_LEASE_S = 0.02
LOST_WAIT_S = 0.05
# How long a broker may take to deliver what is due (it pushes messages asynchronously).
DELIVERY_S = 2.0
# A retry's delay that no run outlives: a retried job stays scheduled, never due.
FAR_S = 3600.0
KEYS = st.sampled_from([None, "a", "b"])
# Each outcome and the state it leads to.
OUTCOME_OF: dict[str, tuple[Outcome, JobState]] = {
    "succeeded": (Succeeded(b"1"), JobState.SUCCEEDED),
    "retry": (RetryAt(delay_s=FAR_S, error="boom"), JobState.SCHEDULED),
    "dead": (Dead("broken"), JobState.DEAD),
    "cancelled": (Cancelled("stop"), JobState.CANCELLED),
    "snoozed": (Snoozed(), JobState.QUEUED),
}
OUTCOMES = st.sampled_from(sorted(OUTCOME_OF))


@dataclass
class ModelJob:
    state: JobState
    max_attempts: int
    key: str | None
    attempt: int = 0
    lease: Lease | None = None


def claim(limit: int, worker_id: str, lease_s: float) -> ClaimRequest:
    return ClaimRequest(queues=(QUEUE,), limit=limit, worker_id=worker_id, lease_s=lease_s)


Storage = Callable[[], AbstractAsyncContextManager[Backend]]
"""Each call: a context that opens a backend on fresh storage, closes it and removes the
storage on exit."""


class BackendMachine(RuleBasedStateMachine):
    """The machine; :func:`backend_machine` makes a subclass bound to one storage."""

    storage: ClassVar[Storage]
    delivers_at_once: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        # Hypothesis calls rules synchronously: each coroutine runs on this loop.
        self.loop = asyncio.new_event_loop()
        self.stack = AsyncExitStack()
        try:
            self.backend = self.run(self.stack.enter_async_context(type(self).storage()))
        except BaseException:
            self.loop.close()
            raise
        self.model: dict[str, ModelJob] = {}
        self.stale: list[Lease] = []
        self.worker_ids = itertools.count()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.stack.aclose())
        finally:
            self.loop.close()

    def ids_in(self, *states: JobState) -> list[str]:
        # Insertion order, not id order: ids are random, and draws must replay identically.
        return [i for i, j in self.model.items() if j.state in states]

    def revoke(self, job: ModelJob) -> None:
        if job.lease is not None:
            self.stale.append(job.lease)
            job.lease = None

    @rule(keys=st.lists(KEYS, min_size=1, max_size=3), max_attempts=st.integers(1, 3))
    def enqueue(self, keys: list[str | None], max_attempts: int) -> None:
        jobs = [new_job(key=k, max_attempts=max_attempts) for k in keys]
        got = [r.id for r in self.run(self.backend.enqueue(jobs))]
        assert len(got) == len(jobs)
        for job, job_id in zip(jobs, got, strict=True):
            # requeue() may revive a job whose key a newer job holds: the protocol does not
            # say which of several active holders dedup returns, so any of them will do.
            holders = [
                i
                for i, m in self.model.items()
                if job.key and m.key == job.key and m.state in ACTIVE_STATES
            ]
            if holders:
                assert job_id in holders, "dedup returned a job that does not hold the key"
            else:
                assert job_id == job.id
                self.model[job.id] = ModelJob(JobState.QUEUED, max_attempts, job.key)

    def take(self, limit: int, lease_s: float) -> list[JobRecord]:
        """Claim as a new worker and check the claim against the model, then apply it."""
        worker = f"w{next(self.worker_ids)}"
        queued = set(self.ids_in(JobState.QUEUED))
        want = min(limit, len(queued))
        got = self.run(self.backend.claim(claim(limit, worker, lease_s)))
        deadline = time.monotonic() + DELIVERY_S
        while not self.delivers_at_once and len(got) < want and time.monotonic() < deadline:
            self.run(self.backend.wait_for_work([QUEUE], 0.05))
            got += self.run(self.backend.claim(claim(want - len(got), worker, lease_s)))
        ids = [j.id for j in got]
        assert len(ids) == len(set(ids)) == want, f"claimed {len(ids)} of {want} due jobs"
        assert set(ids) <= queued, "claimed a job that was not queued"
        for rec in got:
            job = self.model[rec.id]
            job.state, job.attempt = JobState.RUNNING, job.attempt + 1
            job.lease = Lease(job_id=rec.id, worker_id=worker, attempt=job.attempt)
            assert rec.lease == job.lease
        return got

    @rule(limit=st.integers(1, 3))
    def claim(self, limit: int) -> None:
        self.take(limit, 30.0)

    @precondition(lambda self: self.ids_in(JobState.QUEUED))
    @rule(limit=st.integers(1, 2))
    def lose_worker(self, limit: int) -> None:
        """A worker claims and dies: its lease expires, and recover() puts each job back
        in the queue (the attempt still counts) or, without attempts left, makes it dead."""
        got = self.take(limit, LOST_LEASE_S)
        self.run(asyncio.sleep(LOST_WAIT_S))  # the lease running out is the point
        assert self.run(self.backend.recover()) == len(got)
        for rec in got:
            job = self.model[rec.id]
            self.revoke(job)
            job.state = JobState.DEAD if job.attempt >= job.max_attempts else JobState.QUEUED
            after = self.run(self.backend.get(rec.id))
            assert after is not None and after.errors, f"job {rec.id} recorded no error"
            assert (after.errors[-1].attempt, after.errors[-1].error) == (
                job.attempt,
                LEASE_EXPIRED_ERROR,
            )

    @precondition(lambda self: self.ids_in(JobState.RUNNING))
    @rule(data=st.data(), kind=OUTCOMES)
    def complete(self, data: st.DataObject, kind: str) -> None:
        job_id = data.draw(st.sampled_from(self.ids_in(JobState.RUNNING)))
        job = self.model[job_id]
        assert job.lease is not None
        if kind == "retry" and job.attempt >= job.max_attempts:
            kind = "dead"  # the executor never retries a job without attempts left
        outcome, job_state = OUTCOME_OF[kind]
        self.run(self.backend.complete([(job.lease, outcome)]))
        self.revoke(job)
        job.state = job_state
        if kind == "snoozed":
            job.attempt -= 1

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def complete_with_stale_lease(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.stale))
        self.run(self.backend.complete([(lease, Succeeded(b"stale"))]))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(list(self.model)))
        job = self.model[job_id]
        if job.state in (JobState.SUCCEEDED, JobState.DEAD):
            with pytest.raises(InvalidState):
                self.run(self.backend.cancel(job_id))
            return
        rec = self.run(self.backend.cancel(job_id))
        assert rec is not None and rec.state is JobState.CANCELLED
        self.revoke(job)
        job.state = JobState.CANCELLED

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(list(self.model)))
        job = self.model[job_id]
        if job.state not in (JobState.DEAD, JobState.CANCELLED):
            with pytest.raises(InvalidState):
                self.run(self.backend.requeue(job_id))
            return
        if job.key and any(
            m.key == job.key and m.state in ACTIVE_STATES for m in self.model.values()
        ):
            # The protocol is silent on reviving a job whose key a newer active job holds:
            # SQLite refuses (InvalidState), memory allows two active holders. Accept both.
            try:
                rec = self.run(self.backend.requeue(job_id))
            except InvalidState:
                return
        else:
            rec = self.run(self.backend.requeue(job_id))
        assert rec is not None and (rec.state, rec.attempt) == (JobState.QUEUED, 0)
        job.state, job.attempt = JobState.QUEUED, 0

    @rule()
    def heartbeat(self) -> None:
        held = [j.lease for j in self.model.values() if j.lease is not None]
        got = self.run(self.backend.heartbeat([*held, *self.stale], 30.0))
        assert got == {lease.job_id for lease in held}

    @rule()
    def recover(self) -> None:
        # Every lease held between rules is 30 s long (lose_worker recovers its own).
        assert self.run(self.backend.recover()) == 0

    @invariant()
    def records_agree_with_the_model(self) -> None:
        for job_id, job in self.model.items():
            rec = self.run(self.backend.get(job_id))
            assert rec is not None, f"job {job_id} vanished"
            assert (rec.state, rec.attempt, rec.lease) == (job.state, job.attempt, job.lease)

    @invariant()
    def counts_agree_with_the_model(self) -> None:
        expected: dict[JobState, int] = {}
        for job in self.model.values():
            expected[job.state] = expected.get(job.state, 0) + 1
        counts = self.run(self.backend.counts()).get("default", {})
        assert {s: n for s, n in counts.items() if n} == expected


def backend_machine(
    storage: Storage, *, delivers_at_once: bool = True
) -> type[RuleBasedStateMachine]:
    """A state machine class over backends from ``storage`` (a fresh one per example).

    A claim must lease ``min(limit, due jobs)``. With ``delivers_at_once`` (a store: SQLite,
    PostgreSQL, Redis, memory) one call must; without it (a broker, which hands out only the
    messages it has delivered so far), the machine claims again, as a worker would, until it
    has them or ``DELIVERY_S`` has passed. Either way the model, and so what hypothesis draws
    next, does not depend on timing.
    """
    return type(
        "BackendMachine",
        (BackendMachine,),
        {"storage": staticmethod(storage), "delivers_at_once": delivers_at_once},
    )
