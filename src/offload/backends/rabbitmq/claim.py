"""Claiming for the amqp:// backend: from delivered messages to jobs started in the store.

A claim takes messages from the work queues' feeds and leases exactly their jobs in the state
store. A delivery whose job did not start is sorted out: dropped (the job is finished,
cancelled or deleted), delayed again (it came back early), parked unacked (the job runs
elsewhere; its outcome decides) or handed back (due, but refused a moment). Started jobs are
recorded in the lease tables the backend shares with this class.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

from offload.backends.base import Backend
from offload.backends.brokered.store import claim_delivered, get_many
from offload.backends.rabbitmq.broker import Broker
from offload.backends.rabbitmq.connection import Outgoing
from offload.backends.rabbitmq.delays import ms
from offload.backends.rabbitmq.feed import Delivery
from offload.errors import BackendUnavailable
from offload.job import ClaimRequest, JobRecord, JobState, Lease

START_ROUNDS = 4  # rounds of taking messages per claim call (stale ones are dropped)
# A feed's prefetch is this many times the free slots of the claim that starts it. The messages
# of finished jobs stay unacknowledged until their outcomes are in the store; with a prefetch of
# exactly the free slots the broker stops pushing while each batch of outcomes is written, and a
# fast drain claims half-empty batches. What is pushed beyond the free slots is handed back when
# the worker stops claiming (feed.LINGER_S, HOLD_S).
PREFETCH_PER_SLOT = 2
# While no queue is known to be paused, the store is asked again only this often; a delivery
# the store refuses to start asks at once (the store never leases a paused queue's job).
PAUSED_TRUST_S = 1.0


class Claimer:
    """The claim path of one backend instance; fills the backend's lease tables ``held``
    (lease -> its delivery) and ``expires`` (lease -> local deadline)."""

    def __init__(
        self,
        store: Backend,
        broker: Broker,
        held: dict[Lease, Delivery],
        expires: dict[Lease, float],
    ) -> None:
        self._store = store
        self._broker = broker
        self._held = held
        self._expires = expires
        self.parked: dict[str, list[Delivery]] = {}  # queue -> deliveries awaiting their job
        self.paused: set[str] = set()  # as the store last said: waits skip these feeds
        self._trust_until = -math.inf  # monotonic time until which an empty ``paused`` holds
        self.prefetch = 1  # what the last claim would start a feed with: so does a wait

    def clear(self) -> None:
        self.parked.clear()

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        """See :meth:`RabbitMQBackend.claim <offload.backends.rabbitmq.RabbitMQBackend.claim>`."""
        self._broker.wake.clear()  # what this claim does not take wakes the next wait again
        first = req.queues[0] if req.queues and req.queues[0] not in self.paused else ""
        paused, pre = await self._paused_and_first(first, req)
        self.prefetch = _prefetch_for(req)
        out: list[JobRecord] = []
        try:
            for queue in req.queues:
                if queue in paused:
                    if queue == first:
                        self._broker.give_back(queue, pre)
                    await self._broker.pause(queue)
                    continue
                room = req.limit - len(out)
                if room > 0:
                    taken = pre if queue == first else None
                    out.extend(await self._claim_queue(queue, room, req, out, taken))
                elif queue == first:
                    self._broker.give_back(queue, pre)
        except BackendUnavailable:
            if not out:
                raise
            # Jobs started before the failure are returned and run; raising would leave them
            # leased to nobody until their lease ran out. The next claim meets the error again.
        return out

    async def _paused_and_first(
        self, first: str, req: ClaimRequest
    ) -> tuple[set[str], list[Delivery]]:
        """The paused queues and the messages of queue ``first``. The store is asked while some
        queue is paused, or when an answer of "none" is older than PAUSED_TRUST_S; its round
        trip overlaps taking the messages (handed back if that queue turns out paused)."""
        if not self.paused and time.monotonic() < self._trust_until:
            return self.paused, await self._take_early(first, req)
        paused, pre = await asyncio.gather(
            self._store.paused_queues(), self._take_early(first, req), return_exceptions=True
        )
        if isinstance(paused, BaseException):
            if isinstance(pre, list):
                await self._broker.settle([], pre)
            raise paused
        if isinstance(pre, BaseException):
            raise pre
        self._set_paused(paused)
        return paused, pre

    def _set_paused(self, paused: set[str]) -> None:
        self.paused = paused
        self._trust_until = time.monotonic() + PAUSED_TRUST_S

    def note_paused(self, queue: str, paused: bool) -> None:
        """This instance paused or resumed ``queue`` in the store."""
        self._set_paused(self.paused | {queue} if paused else self.paused - {queue})

    async def _take_early(self, queue: str, req: ClaimRequest) -> list[Delivery]:
        if not queue:
            return []
        return await self._broker.take(
            queue, req.limit - len(self.parked.get(queue, [])), _prefetch_for(req)
        )

    async def _claim_queue(
        self,
        queue: str,
        room: int,
        req: ClaimRequest,
        before: list[JobRecord],
        taken: list[Delivery] | None,
    ) -> list[JobRecord]:
        """Start up to ``room`` jobs of ``queue``; ``before``: jobs this claim started already.
        On a failure after some jobs started, those are returned (see :meth:`claim`)."""
        out: list[JobRecord] = []
        try:
            await self._claim_rounds(queue, room, req, taken, out)
        except BackendUnavailable:
            if not out and not before:
                raise
        return out

    async def _claim_rounds(
        self,
        queue: str,
        room: int,
        req: ClaimRequest,
        taken: list[Delivery] | None,
        out: list[JobRecord],
    ) -> None:
        parked = self.parked.pop(queue, [])
        for _ in range(START_ROUNDS):
            want = room - len(out)
            if taken is not None:
                fresh, taken = taken, None
            else:
                fresh = await self._broker.take(
                    queue, max(want - len(parked), 0), _prefetch_for(req)
                )
            if req.job_ids is not None:
                wanted = set(req.job_ids)
                self._broker.give_back(queue, [d for d in fresh if d.job_id not in wanted])
                self._park(queue, [d for d in parked if d.job_id not in wanted])
                fresh = [d for d in fresh if d.job_id in wanted]
                parked = [d for d in parked if d.job_id in wanted]
            candidates, parked = parked + fresh, []
            self._park(queue, candidates[want:])
            started = await self._start(queue, candidates[:want], req)
            out.extend(started)
            # Another round while room is left and some candidates did not start (stale, or
            # parked: a duplicate of a job running here). The next round asks the broker for
            # the whole room, so a parked duplicate never takes a fresh job's place.
            if len(out) >= room or len(started) == len(candidates):
                break
            if queue in self.paused:  # paused meanwhile (see _sort_out): its feed is stopped
                break

    def _park(self, queue: str, deliveries: list[Delivery]) -> None:
        if deliveries:
            self.parked.setdefault(queue, []).extend(deliveries)

    async def _start(
        self, queue: str, deliveries: list[Delivery], req: ClaimRequest
    ) -> list[JobRecord]:
        if not deliveries:
            return []
        deadline = time.monotonic() + req.lease_s  # taken before the store's: never later
        try:
            started = await claim_delivered(
                self._store, queue, [d.job_id for d in deliveries], req.worker_id, req.lease_s
            )
        except BaseException:
            # Not started, or started with the answer lost: either way the messages go back to
            # the broker and the store decides at their next delivery. Kept here unsettled,
            # they would hold their jobs until the connection closed.
            await self._broker.settle([], deliveries)
            raise
        out: list[JobRecord] = []
        rest: list[Delivery] = []
        for d in deliveries:
            rec = started.pop(d.job_id, None)
            if rec is None or rec.lease is None:
                rest.append(d)
                continue
            self._held[rec.lease] = d
            self._expires[rec.lease] = deadline
            out.append(rec)
        if rest:
            try:
                await self._sort_out(queue, rest)
            except BaseException:
                await self._broker.settle([], rest)  # as above; _sort_out parks only at its end
                raise
        return out

    async def _sort_out(self, queue: str, deliveries: list[Delivery]) -> None:
        """Deliveries whose job did not start: drop, delay again, hand back or park. Parks
        only once nothing can fail any more (the caller hands every delivery back on error)."""
        recs = await get_many(self._store, [d.job_id for d in deliveries])
        drop: list[Delivery] = []
        back: list[Delivery] = []
        park: list[Delivery] = []
        again: list[tuple[Delivery, JobRecord]] = []
        now = time.time()
        for d, rec in zip(deliveries, recs, strict=True):
            if rec is None or rec.state.final or rec.limits:
                # cancelled, deleted, finished (or a duplicate of one); or a job with limits,
                # which the store's claim takes (brokered.limited): its message is spare
                drop.append(d)
            elif rec.state is JobState.SCHEDULED and rec.run_at > now + 0.001:
                again.append((d, rec))  # came back early: wait out the rest
            elif rec.state is JobState.RUNNING:
                park.append(d)  # held elsewhere: its outcome decides (at-least-once)
            else:
                back.append(d)  # due but another claimer had it a moment: offer it again
        if again:
            await self._broker.publish([message_of(r, now) for _, r in again])
            drop.extend(d for d, _ in again)
        if back and queue not in self.paused:
            await self._recheck_paused(queue)
        self._park(queue, park)
        await self._broker.settle(drop, back)

    async def _recheck_paused(self, queue: str) -> None:
        """Due deliveries were not started: another claimer had them a moment, or ``queue``
        was paused since the store was last asked. Ask now, so a paused queue's feed stops at
        once; if the store does not answer, the next claim asks again."""
        try:
            self._set_paused(await self._store.paused_queues())
        except BackendUnavailable:
            self._trust_until = -math.inf
            return
        if queue in self.paused:
            await self._broker.pause(queue)


def _prefetch_for(req: ClaimRequest) -> int:
    return max(req.limit, 1) * PREFETCH_PER_SLOT


def message_of(rec: JobRecord, now: float | None = None) -> Outgoing:
    """The broker message of a job record: due now, or after its remaining delay."""
    delay_s = 0.0
    if rec.state is JobState.SCHEDULED:
        # the store's own clock: run_at relative to created_at, or to now for a re-delay
        delay_s = rec.run_at - (rec.created_at if now is None else now)
    return Outgoing(rec.id, rec.queue, rec.priority, ms(delay_s))


class RecordPublisher:
    """The store-backed form's :class:`~offload.backends.brokered.publisher.JobPublisher`:
    a job record travels as its id (:func:`message_of`)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    async def publish_jobs(self, jobs: Sequence[JobRecord], now: float | None = None) -> None:
        await self._broker.publish([message_of(r, now) for r in jobs])

    async def notify(self) -> None:
        await self._broker.notify()
