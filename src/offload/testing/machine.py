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
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from offload.backends.base import Backend
from offload.errors import InvalidState
from offload.job import ACTIVE_STATES, JobState, Lease
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Snoozed, Succeeded
from offload.testing.helpers import claim_request, new_job

T = TypeVar("T")

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


Storage = Callable[[], AbstractAsyncContextManager[Backend]]
"""Each call: a context that opens a backend on fresh storage, closes it and removes the
storage on exit."""


def backend_machine(
    storage: Storage, *, claims_every_due_job: bool = True
) -> type[RuleBasedStateMachine]:
    """A state machine class over backends from ``storage`` (a fresh one per example).

    With ``claims_every_due_job`` (a store: SQLite, PostgreSQL, Redis, memory) a claim must
    return ``min(limit, due jobs)``; without it (a broker, which hands out only the messages
    it has delivered, within its prefetch) it may return fewer, never more, and never a job
    that is not due.
    """

    class BackendMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            # Hypothesis calls rules synchronously: each coroutine runs on this loop.
            self.loop = asyncio.new_event_loop()
            self.stack = AsyncExitStack()
            try:
                self.backend = self.run(self.stack.enter_async_context(storage()))
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
                # retry() may revive a job whose key a newer job holds: the protocol does not
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

        @rule(limit=st.integers(1, 3))
        def claim(self, limit: int) -> None:
            worker = f"w{next(self.worker_ids)}"
            got = self.run(self.backend.claim(claim_request(limit=limit, worker_id=worker)))
            queued = set(self.ids_in(JobState.QUEUED))
            ids = [j.id for j in got]
            assert len(ids) == len(set(ids)) <= min(limit, len(queued))
            if claims_every_due_job:
                assert len(ids) == min(limit, len(queued)), "a due job was left unclaimed"
            assert set(ids) <= queued, "claimed a job that was not queued"
            for rec in got:
                job = self.model[rec.id]
                job.state, job.attempt = JobState.RUNNING, job.attempt + 1
                job.lease = Lease(job_id=rec.id, worker_id=worker, attempt=job.attempt)
                assert rec.lease == job.lease

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
        def retry(self, data: st.DataObject) -> None:
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
            assert self.run(self.backend.recover()) == 0  # every lease is 30 s long

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

    return BackendMachine
