"""``requeue_stored``: what a broker with a store does to retry a job, whichever broker it is
(RabbitMQ's and Beanstalkd's stored forms both call it; their conformance suites run the
path where the message goes out). Here, on a memory store, the paths a live broker rarely
takes: the message cannot be sent, and the job has limits."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

from offload.backends.brokered.handoff import requeue_stored
from offload.backends.brokered.limited import LimitedLane
from offload.backends.brokered.outbox import OUTBOX_QUEUE, Outbox
from offload.backends.memory import MemoryBackend
from offload.errors import BackendUnavailable
from offload.job import JobRecord, JobState
from offload.outcome import Dead
from offload.testing.helpers import finish, must_get, new_job


class Unused:
    """The outbox's publisher: these tests never let a marker come due."""

    async def publish_jobs(self, jobs: Sequence[JobRecord], now: float | None = None) -> None:
        raise AssertionError("no marker comes due in these tests")

    async def notify(self) -> None:
        raise AssertionError("no marker comes due in these tests")


@pytest.fixture
def store(memory_store: MemoryBackend) -> MemoryBackend:
    return memory_store


async def markers(store: MemoryBackend) -> int:
    return (await store.counts()).get(OUTBOX_QUEUE, {}).get(JobState.SCHEDULED, 0)


async def test_a_sent_job_is_queued_and_the_workers_woken_after(store: MemoryBackend) -> None:
    dead = await finish(store, Dead("broken"))
    events: list[str] = []

    async def send(rec: JobRecord) -> None:
        events.append(f"sent {rec.id} {rec.state.value}")

    async def woke() -> None:
        events.append("woke")

    outbox = Outbox(store, Unused(), 30.0)
    again = await requeue_stored(store, outbox, LimitedLane(store), dead.id, send, woke)
    assert again is not None and again.state is JobState.QUEUED
    assert events == [f"sent {dead.id} queued", "woke"]
    assert await markers(store) == 1  # stored first, in case the process died meanwhile
    await outbox.flush()
    assert await markers(store) == 0  # the message went out: the marker is deleted


async def test_a_job_whose_message_cannot_go_is_cancelled_and_its_marker_kept(
    store: MemoryBackend,
) -> None:
    dead = await finish(store, Dead("broken"))
    woken: list[str] = []

    async def send(rec: JobRecord) -> None:
        raise BackendUnavailable("the broker is down")

    async def woke() -> None:
        woken.append("woke")

    outbox = Outbox(store, Unused(), 30.0)
    with pytest.raises(BackendUnavailable):
        await requeue_stored(store, outbox, LimitedLane(store), dead.id, send, woke)
    # Never left queued without a message: cancelled, to be retried again; the marker stays in
    # case the message went out after all (it publishes the job if it is queued then).
    assert (await must_get(store, dead.id)).state is JobState.CANCELLED
    assert await markers(store) == 1
    assert woken == []


async def test_a_job_with_limits_stays_in_the_store(store: MemoryBackend) -> None:
    limited = msgspec.structs.replace(new_job(), limits=("1/0/x",))
    dead = await finish(store, Dead("broken"), limited)

    async def send(rec: JobRecord) -> None:
        raise AssertionError("a job with limits gets no message")

    async def woke() -> None:
        raise AssertionError("the store's claim takes it: no broker wake-up")

    outbox = Outbox(store, Unused(), 30.0)
    again = await requeue_stored(store, outbox, LimitedLane(store), dead.id, send, woke)
    assert again is not None and again.state is JobState.QUEUED
    await outbox.flush()
    assert await markers(store) == 0  # no message to cover: no marker left
