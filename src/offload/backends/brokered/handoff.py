"""The enqueue of a broker with a state store: :func:`enqueue_stored` (async), and the sync
enqueue (:class:`Handoff`): store on the caller's thread, publish on the backend's loop
without making the caller wait for the broker. Jobs with limits are stored alone, never
published (:mod:`offload.backends.brokered.limited`).

What makes this safe is the outbox (:mod:`offload.backends.brokered.outbox`): the store write
carries the batch's marker, in the same atomic batch as the jobs, through the store's own sync
path (:class:`~offload.backends.base.SyncEnqueue`). When it returns, the jobs are stored, which
is the promise of ``enqueue``; publishing their messages is then handed to the loop. If the
publish fails (or the process dies first), the marker comes due and a worker's recovery
publishes them: a job is delivered late, never lost. The price, against the async
:meth:`enqueue`: a broker that is down is not reported to this caller (the async path raises
BackendUnavailable and withdraws the jobs); their delivery waits for the marker instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgspec

from offload.backends.base import Backend, SyncEnqueue
from offload.backends.brokered.limited import LimitedLane, carried, carried_ids
from offload.backends.brokered.outbox import Outbox
from offload.backends.unique import replaced_records
from offload.errors import BackendUnavailable
from offload.job import JobRecord, JobState, NewJob

log = logging.getLogger("offload.backends.brokered")

Publish = Callable[[Sequence[JobRecord]], Awaitable[None]]

RETRY_FIRST_S = 0.2  # the first pause after a failed publish of stored jobs
RETRY_MAX_S = 2.0  # pauses double up to this
RETAIN_MAX = 100_000  # jobs kept to publish again; beyond it, the oldest wait for their markers


class _Batch(msgspec.Struct):
    """Jobs stored by one sync enqueue, their outbox marker, and when they were stored."""

    records: list[JobRecord]
    marker_id: str | None
    since: float  # time.monotonic()


async def enqueue_stored(
    store: Backend,
    outbox: Outbox,
    jobs: Sequence[NewJob],
    limits: Mapping[str, int] | None,
    publish: Publish,
) -> list[JobRecord]:
    """The async enqueue of a broker with a store: store the batch (dedup and depth limits
    happen there) with an outbox marker naming the jobs the broker carries, then publish
    those (the jobs with limits stay in the store alone: see
    :mod:`offload.backends.brokered.limited`). If publishing fails, the new records are
    deleted again and BackendUnavailable is raised; if this process dies before the
    confirms, the marker has the jobs published later."""
    ids = carried_ids(jobs)
    marker = [outbox.marker(ids)] if ids else []
    recs = (await store.enqueue([*jobs, *marker], limits=limits))[: len(jobs)]
    new = [(r, j) for r, j in zip(recs, jobs, strict=True) if r.id == j.id]
    moved = carried(replaced_records(jobs, recs))  # debounced: its message goes at its new time
    fresh = [r for r, j in new if not j.limits]  # (the job's own word: a store may not echo it)
    fresh.sort(key=lambda r: r.run_at if r.state is JobState.QUEUED else math.inf)
    try:
        await publish([*fresh, *moved])
    except BackendUnavailable:
        with contextlib.suppress(BackendUnavailable):
            await store.delete([*(r.id for r, _ in new), *(m.id for m in marker)])
        raise
    for m in marker:
        outbox.published(m.id)
    return recs


async def requeue_stored(
    store: Backend,
    outbox: Outbox,
    lane: LimitedLane,
    job_id: str,
    send: Callable[[JobRecord], Awaitable[None]],
    woke: Callable[[], Awaitable[None]],
) -> JobRecord | None:
    """``requeue`` of a broker with a store: queue a dead or cancelled job again in the store,
    then ``send`` its message and, once it is sent, ``woke`` the waiting workers. If the send
    fails the job is cancelled again (so it can be retried later) and BackendUnavailable is
    raised. An outbox marker, stored first, covers a crash between the two. A job with limits
    is left to the store's claim (``lane``)."""
    marker = outbox.marker([job_id])
    await store.enqueue([marker])
    try:
        rec = await store.requeue(job_id)
    except BackendUnavailable:
        raise  # it may have happened: the marker stays, to send it if it did
    except BaseException:
        outbox.published(marker.id)
        raise
    if rec is None or rec.limits:  # (a job with limits: the store's claim takes it)
        outbox.published(marker.id)
        if rec is not None:
            lane.note()
        return rec
    try:
        await send(rec)
    except BackendUnavailable:
        with contextlib.suppress(BackendUnavailable):
            await store.cancel(job_id)
        raise
    outbox.published(marker.id)
    await woke()
    return rec


class Handoff:
    """``enqueue_now`` of one stored-form backend. ``publish`` sends the messages of the
    stored jobs and wakes local waiters; ``enqueue`` is the form's async enqueue (for a store
    without a sync path)."""

    def __init__(
        self,
        store: Backend,
        outbox: Outbox,
        publish: Publish,
        enqueue: Callable[[Sequence[NewJob], Mapping[str, int] | None], Awaitable[list[JobRecord]]],
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._publish = publish
        self._enqueue = enqueue
        self._loop: asyncio.AbstractEventLoop | None = None
        # (stored jobs, their marker) waiting for the sender; one sender at a time publishes
        # all that waits in one call: a burst of sync enqueues costs a few broker calls. The
        # jobs with limits are among them (``publish`` sends no message for those, but learns
        # of them); a batch of such jobs alone has no marker.
        self._pending: list[_Batch] = []
        self._sender: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    def opened(self) -> None:
        """The backend opened on the running loop: publishing goes there."""
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()

    def enqueue_now(
        self, jobs: Sequence[NewJob], limits: Mapping[str, int] | None
    ) -> list[JobRecord]:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise BackendUnavailable("the backend is not open (call open() first)")
        if not jobs:
            return []
        store = self._store
        if not isinstance(store, SyncEnqueue):  # the whole async enqueue, on the loop
            return asyncio.run_coroutine_threadsafe(self._coro(jobs, limits), loop).result()
        ids = carried_ids(jobs)
        marker = [self._outbox.marker(ids)] if ids else []
        recs = store.enqueue_now([*jobs, *marker], limits=limits)[: len(jobs)]
        fresh = [
            r if r.limits == j.limits else msgspec.structs.replace(r, limits=j.limits)
            for r, j in zip(recs, jobs, strict=True)
            if r.id == j.id
        ]  # (with the job's own limits: ``publish`` tells them apart, a store may not echo them)
        fresh += replaced_records(jobs, recs)  # debounced: its message goes at its new time
        try:
            loop.call_soon_threadsafe(self._queue, fresh, marker[0].id if marker else None)
        except RuntimeError:  # the loop closed meanwhile: the marker publishes them later
            pass
        return recs

    async def _coro(
        self, jobs: Sequence[NewJob], limits: Mapping[str, int] | None
    ) -> list[JobRecord]:
        return await self._enqueue(jobs, limits)

    def _queue(self, fresh: list[JobRecord], marker_id: str | None) -> None:
        self._pending.append(_Batch(fresh, marker_id, time.monotonic()))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        """Publish what waits, all of it in one call, until nothing does. A publish that fails
        is tried again after a pause (doubling up to :data:`RETRY_MAX_S`, what arrived
        meanwhile included), so jobs stored while the broker was down go out as soon as it is
        back, not when their markers come due. A batch is retried until its marker is about to
        come due (a worker's sweep publishes it from then on) or the backend closes (the marker
        covers it); at most :data:`RETAIN_MAX` jobs are kept for it, the newest."""
        pause, failing = RETRY_FIRST_S, False
        while self._pending:
            batch, self._pending = self._pending, []
            records = [r for b in batch for r in b.records]
            records.sort(key=lambda r: r.run_at if r.state is JobState.QUEUED else math.inf)
            try:
                await self._publish(records)
            except Exception as exc:  # whatever it was, the markers stay and cover these jobs
                if not failing:
                    log.warning(
                        "publishing %d stored job(s) failed (%s); retrying until the broker "
                        "takes them (the outbox publishes them within %.0f s otherwise)",
                        len(records),
                        exc,
                        self._outbox.orphan_after_s,
                    )
                failing = True
                retry = self._retained(batch)
                if retry and not self._closed.is_set():
                    with contextlib.suppress(TimeoutError):  # (close() ends the pause)
                        await asyncio.wait_for(self._closed.wait(), pause)
                    pause = min(pause * 2, RETRY_MAX_S)
                if not self._closed.is_set():
                    self._pending = retry + self._pending
                continue
            if failing:
                log.info("the broker takes the stored jobs again")
                pause, failing = RETRY_FIRST_S, False
            for b in batch:
                if b.marker_id is not None:
                    self._outbox.published(b.marker_id)

    def _retained(self, failed: list[_Batch]) -> list[_Batch]:
        """What of a failed publish to try again: batches whose markers are not about to come
        due, the newest first up to :data:`RETAIN_MAX` jobs, in their order."""
        until = time.monotonic() - self._outbox.orphan_after_s + RETRY_MAX_S
        kept: list[_Batch] = []
        n = 0
        for b in reversed(failed):
            n += len(b.records)
            if b.since <= until or n > RETAIN_MAX:
                break
            kept.append(b)
        return kept[::-1]

    async def close(self) -> None:
        """Wait for the publishes in flight and queued (each is short, or fails and leaves its
        marker: failed ones are not tried again once closing)."""
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks already sent run first
        self._loop = None
        self._closed.set()
        sender = self._sender
        if sender is not None:
            await asyncio.gather(sender, return_exceptions=True)
