"""Retry policies per exception, through a real worker: what the executor decides from a
task's ``retry_on`` / ``give_up_on`` / ``backoff`` is what the backend stores."""

from __future__ import annotations

import asyncio
import time

from offload.app import App
from offload.backends.base import Backend
from offload.backoff import FixedBackoff
from offload.hooks import Hook
from offload.job import JobRecord, JobState
from offload.outcome import Outcome
from offload.testing.helpers import must_get
from offload.worker.worker import Worker, WorkerConfig

_FAILURES: dict[str, type[Exception]] = {
    "reset": ConnectionResetError,  # a ConnectionError: retried, as `except` would match it
    "value": ValueError,  # not in retry_on: dead at once
    "key": KeyError,  # in give_up_on: dead at once
    "index": IndexError,  # a LookupError like KeyError, but not given up on: retried
    "slow": TimeoutError,  # retried after its own, long, backoff
}


class _Attempts(Hook):
    """Sets ``done`` once ``expected`` attempts have ended (any outcome)."""

    def __init__(self, expected: int) -> None:
        self.left = expected
        self.done = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def after_run(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
        self._loop.call_soon_threadsafe(self._count)

    def _count(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()


async def run_attempts(app: App, expected: int) -> None:
    """Run a worker until ``expected`` attempts have ended, then stop it gracefully (which
    flushes their outcomes to the backend). A broker's delayed retry makes "nothing is due"
    racy, so this waits on attempts, not on an empty queue; bounded, so a hang fails."""
    attempts = _Attempts(expected)
    worker = Worker(app, WorkerConfig(poll_s=0.05, concurrency=4), listeners=[attempts])
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(30):
            await attempts.done.wait()
    finally:
        await worker.stop()
        await running


class RetryPolicyConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_retry_policy_per_exception_through_a_worker(self, backend: Backend) -> None:
        app = App(backend=backend)
        # No delay: on RabbitMQ the retry is handed back in the same settle that acks other
        # jobs' messages (a multiple ack once acked it first: "unknown delivery tag").
        now = FixedBackoff(0)

        @app.task(
            name="conformance.retry_on",
            max_attempts=3,
            retry_on=(ConnectionError, TimeoutError),
            backoff={ConnectionError: now, TimeoutError: FixedBackoff(3600.0)},
        )
        def only_connection_errors(kind: str) -> None:
            raise _FAILURES[kind](kind)

        @app.task(name="conformance.give_up_on", max_attempts=3, give_up_on=KeyError, retry=now)
        def not_key_errors(kind: str) -> None:
            raise _FAILURES[kind](kind)

        reset, value, slow = [
            await only_connection_errors.aenqueue(k) for k in ("reset", "value", "slow")
        ]
        key, index = [await not_key_errors.aenqueue(k) for k in ("key", "index")]
        before = time.time()
        # reset and index: 3 attempts each; value, key and slow: 1 each.
        await run_attempts(app, 9)

        async def state(job_id: str) -> tuple[JobState, int, JobRecord]:
            rec = await must_get(backend, job_id)
            return rec.state, rec.attempt, rec

        assert (await state(reset.id))[:2] == (JobState.DEAD, 3)
        assert (await state(index.id))[:2] == (JobState.DEAD, 3)
        for given_up, name in ((value, "ValueError"), (key, "KeyError")):
            st, attempt, rec = await state(given_up.id)
            assert (st, attempt) == (JobState.DEAD, 1), rec
            assert rec.error is not None and name in rec.error, rec.error
        if backend.capabilities.delayed:
            st, attempt, rec = await state(slow.id)
            assert (st, attempt) == (JobState.SCHEDULED, 1), rec
            assert rec.run_at >= before + 3000, "TimeoutError's own backoff was not used"
