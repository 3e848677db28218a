"""The outbox of a broker with a state store: no job left without its message.

An enqueue stores its jobs, then publishes their messages. A producer that dies in between
would leave jobs ``queued`` in the store that no message will ever deliver. So the store write
carries, in the same atomic batch, one **marker**: a job of the internal queue
:data:`OUTBOX_QUEUE`, due :data:`ORPHAN_AFTER_S` later, whose arguments are the batch's job
ids. Once the messages are confirmed the marker is deleted (in the background, batched: the
enqueue does not wait for it). A marker that comes due was left by a producer that never got
that far: any worker's recovery claims it, publishes a message for each of its jobs still
waiting, and deletes it. If the producer was merely slower than the grace, a job gets two
messages; the store's lease makes sure it runs once, and the spare message is dropped.

A **repair marker** (:meth:`Outbox.repair_marker`) names a queue instead: the broker lost
its queue and the messages in it (RabbitMQ can lose a durable queue declared moments before it
was killed), so the sweep publishes a message for every job of that queue the store has
waiting or running. It is stored before the broker queue is declared again, so the repair
outlives the process that noticed.

No marker is ever claimed by a worker's normal claim (nobody consumes the internal queue), and
the backend hides the queue from ``counts`` and ``list_jobs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import msgspec

from offload.backends.base import Backend
from offload.backends.brokered.publisher import JobPublisher
from offload.backends.brokered.store import get_many
from offload.errors import BackendUnavailable
from offload.job import (
    WAITING_STATES,
    ClaimRequest,
    JobFilter,
    JobRecord,
    JobState,
    NewJob,
    new_job_id,
)
from offload.outcome import RetryAt, Succeeded

log = logging.getLogger("offload.backends.brokered")

OUTBOX_QUEUE = "_offload:outbox"
OUTBOX_TASK = "_offload:republish"
REPAIR_TASK = "_offload:repair"  # a marker naming a queue whose broker queue was lost
REPAIR_PAGE = 500  # jobs listed and published at a time by a repair
ORPHAN_AFTER_S = 30.0  # a marker still there this long after its enqueue began is an orphan's
FLUSH_S = 0.1  # deleted markers are batched this long
SWEEP_LIMIT = 20  # markers handled per recovery pass
MARKER_LEASE_S = 60.0
SWEEP_RETRY_S = 1.0  # a marker whose publish failed is due again this much later, doubling
MARKER_ATTEMPTS = 100  # a sweep that keeps failing on one marker gives up on it eventually


class _Ids(msgspec.Struct, frozen=True):
    ids: list[str]


class _Queue(msgspec.Struct, frozen=True):
    queue: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Ids).decode
_decode_queue = msgspec.json.Decoder(_Queue).decode


class Outbox:
    """Markers for one backend instance (see the module docstring)."""

    def __init__(self, store: Backend, broker: JobPublisher, orphan_after_s: float) -> None:
        self._store = store
        self._broker = broker
        self.orphan_after_s = orphan_after_s
        self._done: list[str] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def publisher(self) -> JobPublisher:
        """The broker's side: how the jobs a marker names get their messages."""
        return self._broker

    def start(self) -> None:
        """The backend (re)opens: markers are deleted again."""
        self._closed = False

    def marker(self, job_ids: Sequence[str]) -> NewJob:
        """The marker to store in the same batch as the jobs ``job_ids``."""
        return NewJob(
            id=new_job_id(),
            task=OUTBOX_TASK,
            queue=OUTBOX_QUEUE,
            args=_encode(_Ids(list(job_ids))),
            delay_s=self.orphan_after_s,
            max_attempts=MARKER_ATTEMPTS,
        )

    def published(self, marker_id: str) -> None:
        """The marker's messages are confirmed: delete it soon (batched, in the background)."""
        if self._closed:
            return  # a marker left behind only gives its jobs a spare message
        self._done.append(marker_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(), name="offload-outbox")

    async def _flush_later(self) -> None:
        while self._done:  # (markers published while a delete was in flight included)
            await asyncio.sleep(FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        """Delete the markers of published batches now. A marker whose delete fails is left to
        come due: its jobs get a spare message, which is harmless."""
        ids, self._done = self._done, []
        if ids:
            with contextlib.suppress(BackendUnavailable):
                await self._store.delete(ids)

    async def close(self) -> None:
        """Delete the markers of published batches (waiting for a delete in flight)."""
        self._closed = True
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            with contextlib.suppress(asyncio.CancelledError):
                await flusher  # its sleep is short; cancelling it could lose a delete
        await self.flush()

    async def sweep(self, worker_id: str) -> int:
        """Publish the jobs of markers that came due (their producer died between storing and
        publishing) and delete those markers; return how many jobs got a message."""
        req = ClaimRequest(
            queues=(OUTBOX_QUEUE,), limit=SWEEP_LIMIT, worker_id=worker_id, lease_s=MARKER_LEASE_S
        )
        markers = await self._store.claim(req)
        if not markers:
            return 0
        waiting: list[JobRecord] = []
        lost: list[str] = []  # queues whose broker queues were lost (repair markers)
        for m in markers:
            try:
                if m.task == REPAIR_TASK:
                    lost.append(_decode_queue(m.args).queue)
                    continue
                ids = _decode(m.args).ids
            except msgspec.DecodeError:
                log.error("outbox marker %s does not decode; deleting it", m.id)
                continue
            recs = await get_many(self._store, ids)
            # (a job with limits is never published: the store's claim takes it)
            waiting += [
                r for r in recs if r is not None and r.state in WAITING_STATES and not r.limits
            ]
        now = time.time()
        try:
            await self._broker.publish_jobs(waiting, now)
            again = [await self._republish(queue) for queue in lost]
        except BackendUnavailable as exc:  # due again soon, not when the marker lease ends
            error = f"publishing failed: {exc}"
            retries = [
                (m.lease, RetryAt(min(SWEEP_RETRY_S * 2 ** (m.attempt - 1), MARKER_LEASE_S), error))
                for m in markers
                if m.lease and m.attempt < MARKER_ATTEMPTS  # (the last: its lease runs out)
            ]
            with contextlib.suppress(BackendUnavailable):
                await self._store.complete(retries)
            raise
        await self._store.complete([(m.lease, Succeeded()) for m in markers if m.lease])
        await self._store.delete([m.id for m in markers])  # (delete spares running jobs)
        if waiting:
            log.warning(
                "published %d job(s) whose producer stopped between storing and publishing them",
                len(waiting),
            )
        for queue, n in zip(lost, again, strict=True):
            log.warning("published %d job(s) of queue %r again: its broker lost them", n, queue)
        if waiting or any(again):
            await self._broker.notify()
        return len(waiting) + sum(again)

    def repair_marker(self, queue: str) -> NewJob:
        """A marker that has a worker's sweep publish every job of ``queue`` the store has
        waiting or running again: the broker lost the queue, and the messages in it. Stored
        before the broker queue is declared again, so the repair survives this process; its
        key keeps one per queue waiting at a time (detections at once by several processes
        store one)."""
        return NewJob(
            id=new_job_id(),
            task=REPAIR_TASK,
            queue=OUTBOX_QUEUE,
            args=_encode(_Queue(queue)),
            max_attempts=MARKER_ATTEMPTS,
            key=f"{REPAIR_TASK}:{queue}",
        )

    async def _republish(self, queue: str) -> int:
        """Publish a message for each job of ``queue`` the store has queued, scheduled or
        running, a page at a time; return how many. A spare message (a job whose own message
        survived) is dropped or parked when delivered, as a duplicate publish's is."""
        n = 0
        for state in (JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING):
            cursor: str | None = None
            while True:
                flt = JobFilter(state=state, queue=queue, cursor=cursor, limit=REPAIR_PAGE)
                page = await self._store.list_jobs(flt)
                jobs = [r for r in page.jobs if not r.limits]  # (the store's claim takes those)
                await self._broker.publish_jobs(jobs, time.time())
                n += len(jobs)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        return n
