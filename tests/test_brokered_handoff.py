"""The sync enqueue of a broker with a store (``Handoff``) and the outbox's sweep, when the
broker does not take a publish: the jobs are stored, and go out as soon as the broker is back
rather than when their markers come due; a sweep whose publish fails has its markers due
again soon. RabbitMQ's and Beanstalkd's stored forms both use these; the reliability
harness restarts a real RabbitMQ under them. Here, on a memory store, with a broker that
fails on demand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import msgspec
import pytest

from offload.backends.brokered.handoff import RETRY_MAX_S, Handoff
from offload.backends.brokered.outbox import OUTBOX_QUEUE, SWEEP_RETRY_S, Outbox
from offload.backends.memory import MemoryBackend
from offload.errors import BackendUnavailable
from offload.job import ClaimRequest, JobFilter, JobRecord, JobState, NewJob
from offload.outcome import Succeeded
from offload.testing.helpers import QUEUE, finish, must_get, new_job


class Broker:
    """Fails its first ``failures`` publishes, then records what it is sent."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.sent: list[str] = []
        self.taken = asyncio.Event()

    async def publish(self, records: Sequence[JobRecord]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise BackendUnavailable("the broker is down")
        self.sent += [r.id for r in records]
        self.taken.set()

    async def publish_jobs(self, jobs: Sequence[JobRecord], now: float | None = None) -> None:
        await self.publish(jobs)

    async def notify(self) -> None:
        pass


@pytest.fixture
def store(memory_store: MemoryBackend) -> MemoryBackend:
    return memory_store


async def markers(store: MemoryBackend) -> int:
    counts = (await store.counts()).get(OUTBOX_QUEUE, {})
    return sum(counts.values())


def handoff(store: MemoryBackend, broker: Broker, orphan_after_s: float) -> tuple[Handoff, Outbox]:
    outbox = Outbox(store, broker, orphan_after_s)

    async def unused(jobs: Sequence[NewJob], limits: object) -> list[JobRecord]:
        raise AssertionError("a memory store enqueues on the caller's thread")

    h = Handoff(store, outbox, broker.publish, unused)
    h.opened()
    return h, outbox


async def test_jobs_stored_while_the_broker_is_down_go_out_when_it_is_back(
    store: MemoryBackend,
) -> None:
    broker = Broker(failures=3)
    h, outbox = handoff(store, broker, orphan_after_s=30.0)
    first = h.enqueue_now([new_job()], None)
    await asyncio.sleep(0.05)  # the first publish has failed: the next arrives while it waits
    second = h.enqueue_now([new_job(), new_job()], None)
    started = time.monotonic()
    await asyncio.wait_for(broker.taken.wait(), 10)
    # Retried (pauses of 0.2, 0.4, 0.8 s), long before the markers' 30 s: one publish of all.
    assert time.monotonic() - started < 5
    assert broker.calls == 4
    assert broker.sent == [r.id for r in [*first, *second]]
    await h.close()
    await outbox.close()
    assert await markers(store) == 0  # published: the markers are deleted


async def test_close_ends_the_retries_and_the_markers_stay(store: MemoryBackend) -> None:
    broker = Broker(failures=1_000)
    h, outbox = handoff(store, broker, orphan_after_s=30.0)
    (job,) = h.enqueue_now([new_job()], None)
    deadline = time.monotonic() + 10
    while broker.calls < 5:  # failing; the pause after the fifth is RETRY_MAX_S
        assert time.monotonic() < deadline, broker.calls
        await asyncio.sleep(0.05)
    started = time.monotonic()
    await h.close()  # does not sit out the pause
    assert time.monotonic() - started < RETRY_MAX_S / 4
    await outbox.close()
    calls = broker.calls
    await asyncio.sleep(0.5)
    assert broker.calls == calls  # no retry once closed
    assert (await must_get(store, job.id)).state is JobState.QUEUED
    assert await markers(store) == 1  # it covers the job: a worker's sweep publishes it


async def test_jobs_whose_markers_come_due_are_left_to_the_sweep(store: MemoryBackend) -> None:
    broker = Broker(failures=1_000)
    # The marker comes due sooner than a retry's longest pause: the sweep's, not ours.
    h, outbox = handoff(store, broker, orphan_after_s=RETRY_MAX_S / 2)
    h.enqueue_now([new_job()], None)
    await asyncio.sleep(0.5)
    assert broker.calls == 1
    await h.close()
    await outbox.close()
    assert await markers(store) == 1


async def test_a_sweep_whose_publish_fails_has_its_markers_due_again_soon() -> None:
    now = [1_000_000.0]
    store = MemoryBackend(clock=lambda: now[0])
    await store.open()
    broker = Broker(failures=2)
    outbox = Outbox(store, broker, 0.0)  # markers due at once
    job = new_job()
    await store.enqueue([job, outbox.marker([job.id])])
    for attempt in (1, 2):
        with pytest.raises(BackendUnavailable):
            await outbox.sweep("w1")
        page = await store.list_jobs(JobFilter(queue=OUTBOX_QUEUE))
        (marker,) = page.jobs
        # Scheduled again (not held under its 60 s lease), after a pause that doubles.
        assert marker.state is JobState.SCHEDULED
        assert marker.run_at == pytest.approx(now[0] + SWEEP_RETRY_S * 2 ** (attempt - 1))
        assert await outbox.sweep("w1") == 0  # not due yet
        now[0] = marker.run_at
    assert await outbox.sweep("w1") == 1
    assert broker.sent == [job.id]
    assert await markers(store) == 0
    await store.close()


async def test_a_repair_marker_publishes_every_waiting_or_running_job_of_its_queue(
    store: MemoryBackend,
) -> None:
    """The broker lost a queue: the sweep publishes a message for each job of that queue the
    store has queued, scheduled or running (not finished ones, not jobs with limits, not
    other queues'), once, however many processes noticed."""
    broker = Broker(failures=0)
    outbox = Outbox(store, broker, 30.0)
    queued, scheduled, running, done = new_job(), new_job(), new_job(), new_job()
    limited = msgspec.structs.replace(new_job(), limits=("1/0/x",))
    other = new_job(queue="other")
    await finish(store, Succeeded(), done)
    await store.enqueue([running])
    await store.claim(ClaimRequest(queues=(QUEUE,), limit=1, worker_id="w", lease_s=30))
    await store.enqueue([queued, limited, other])
    await store.enqueue([msgspec.structs.replace(scheduled, delay_s=60)])
    first = await store.enqueue([outbox.repair_marker(QUEUE)])
    again = await store.enqueue([outbox.repair_marker(QUEUE)])  # another process noticed
    assert again[0].id == first[0].id  # one repair per queue waiting
    assert await outbox.sweep("w1") == 3
    assert sorted(broker.sent) == sorted([queued.id, scheduled.id, running.id])
    assert await markers(store) == 0
