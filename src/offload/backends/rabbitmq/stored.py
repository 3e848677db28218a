"""``amqp://`` / ``amqps://`` — RabbitMQ carries delivery; a state store keeps the jobs.

    amqp://guest:guest@127.0.0.1/?store=sqlite:///var/lib/app/jobs.db&prefix=offload

RabbitMQ is a broker, not a job store. Each runnable job is one persistent message (its id)
in a durable priority queue, published with confirms; a worker takes messages with manual
acknowledgement and acks one only after the job's outcome is recorded. Retries and delayed
jobs go through TTL delay queues that dead-letter back to the work queue (no plugin).

Job state (status, attempts, results, errors, the dead list, listing, pause, workers) lives in
the **state store** named by ``?store=``: any other offload backend URL, used only through the
Backend protocol. The store's record is the truth and its lease is the fencing token; the
broker's unacknowledged delivery is how the job travels and how it comes back when a
connection dies. A message whose job the store no longer wants run (cancelled, deleted,
finished) is dropped when it is delivered.

Without ``?store=``, :func:`rabbitmq_backend` (what ``from_url`` calls) gives the store-less
backend of :mod:`offload.backends.rabbitmq.direct` instead.

Options (URL query or keyword): ``store``, ``orphan_after_s`` (see
:mod:`offload.backends.brokered.outbox`, default 30), ``prefix`` (queue-name prefix, default
``offload``), ``timeout_s`` (connect/RPC timeout, default 10). A store URL with its own query
string must be percent-encoded. Other query parameters go to aio-pika; ``heartbeat`` defaults
to :data:`HEARTBEAT_S` instead of the broker's 60 s (see there).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from offload.backends.base import Backend, Capabilities
from offload.backends.brokered.delegation import StoreDelegation
from offload.backends.brokered.handoff import Handoff, enqueue_stored, requeue_stored
from offload.backends.brokered.limited import LimitedLane, carried
from offload.backends.brokered.outbox import ORPHAN_AFTER_S, Outbox
from offload.backends.brokered.store import get_many
from offload.backends.brokered.workflows import StoreWorkflows
from offload.backends.common import masked
from offload.backends.rabbitmq.broker import Broker
from offload.backends.rabbitmq.claim import Claimer, RecordPublisher, message_of
from offload.backends.rabbitmq.connection import Outgoing
from offload.backends.rabbitmq.delays import PARKED_RETRY_S, ms
from offload.backends.rabbitmq.feed import Delivery
from offload.backends.rabbitmq.options import HEARTBEAT_S, parse_url
from offload.errors import BackendUnavailable, ConfigurationError
from offload.job import (
    ClaimRequest,
    JobRecord,
    Lease,
    NewJob,
)
from offload.outcome import Outcome, RetryAt, Snoozed

__all__ = ["HEARTBEAT_S", "RabbitMQBackend", "rabbitmq_backend"]

log = logging.getLogger("offload.backends.rabbitmq")

LEASE_MARGIN_S = 1.0  # a lease this close to its local deadline is checked in the store


def rabbitmq_backend(url: str, **options: Any) -> Backend:
    """The backend of an ``amqp://`` URL: :class:`RabbitMQBackend` with ``?store=``, the
    store-less :class:`~offload.backends.rabbitmq.direct.DirectRabbitMQBackend` without."""
    _, opts = parse_url(url, options)
    if "store" in opts and not opts["store"]:
        raise ConfigurationError(
            "?store= is empty: name a state store (sqlite:///path/jobs.db, postgresql://...) "
            "or leave the option out for the store-less backend"
        )
    if opts.get("store"):
        return RabbitMQBackend(url, **options)
    from offload.backends.rabbitmq.direct import DirectRabbitMQBackend

    return DirectRabbitMQBackend(url, **options)


class RabbitMQBackend(StoreDelegation, StoreWorkflows):
    """Delivery on RabbitMQ, state in the store of ``?store=`` (see the module docstring)."""

    def __init__(self, url: str, **options: Any) -> None:
        amqp_url, opts = parse_url(url, options)
        store_url = opts.get("store")
        if not store_url:
            raise ConfigurationError(
                "RabbitMQBackend needs a state store for job status, results and inspection: "
                "add ?store=sqlite:///path/jobs.db or ?store=postgresql://... to the URL "
                "(from_url gives the store-less backend for an amqp:// URL without one)"
            )
        if urlsplit(store_url).scheme.lower() in ("amqp", "amqps"):
            raise ConfigurationError("the state store of amqp:// cannot be another amqp:// URL")
        from offload.backends import from_url

        self._store: Backend = from_url(store_url)
        self.prefix = opts.get("prefix") or "offload"
        name = f"offload:{self.prefix}:{uuid.uuid4().hex[:8]}"
        self._broker = Broker(amqp_url, self.prefix, name, float(opts.get("timeout_s", 10)))
        self._url = masked(url)
        sc = self._store.capabilities
        self.capabilities = Capabilities(
            inspect=sc.inspect,
            notify=True,
            transactional=False,
            priorities=True,
            delayed=True,
            unique=sc.unique,
            results=sc.results,
            pause=sc.pause,
            cross_process=sc.cross_process,
            workflows=sc.workflows,
            limits=sc.limits,
        )
        self._lane = LimitedLane(self._store)  # jobs with limits: see brokered.limited
        self._held: dict[Lease, Delivery] = {}
        self._expires: dict[Lease, float] = {}  # local clock: when to give a silent lease up
        self._claimer = Claimer(self._store, self._broker, self._held, self._expires)
        orphan_after_s = float(opts.get("orphan_after_s", ORPHAN_AFTER_S))
        self._outbox = Outbox(self._store, RecordPublisher(self._broker), orphan_after_s)
        self._broker.on_lost = self._queue_lost
        self._handoff = Handoff(
            self._store,
            self._outbox,
            self._publish_stored,
            lambda j, lim: self.enqueue(j, limits=lim),
        )  # enqueue_now

    @property
    def url(self) -> str:
        return self._url

    @property
    def store(self) -> Backend:
        """The state store (for tests and tools; the worker never needs it)."""
        return self._store

    @property
    def connection_name(self) -> str:
        """The client-provided name of this instance's AMQP connection."""
        return self._broker.connection_name

    async def open(self) -> None:
        self._outbox.start()
        await self._store.open()
        await self._broker.ensure()
        self._handoff.opened()

    async def close(self) -> None:
        await self._handoff.close()  # its publishes in flight, before the broker goes
        with contextlib.suppress(BackendUnavailable):
            await self._outbox.close()
        self._held.clear()
        self._expires.clear()
        self._claimer.clear()
        await self._broker.close()
        await self._store.close()

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """Store the batch in the state store (dedup and limits happen there) with an outbox
        marker, then publish one message per newly stored job without limits and wait for the
        broker's confirms (:func:`~offload.backends.brokered.handoff.enqueue_stored`). Jobs
        with limits get no message: the store's claim takes them
        (:mod:`offload.backends.brokered.limited`)."""
        if not jobs:
            return []
        recs = await enqueue_stored(
            self._store,
            self._outbox,
            jobs,
            limits,
            lambda fresh: self._broker.publish([message_of(r) for r in fresh]),
        )
        if any(j.limits for j in jobs):
            self._lane.note()
        await self._broker.notify()
        return recs

    def enqueue_now(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """:class:`~offload.backends.base.SyncEnqueue`: the store's sync path stores the jobs
        with their outbox marker; their publish runs on the loop, unwaited (see
        :mod:`offload.backends.brokered.handoff`)."""
        return self._handoff.enqueue_now(jobs, limits)

    async def _publish_stored(self, fresh: Sequence[JobRecord]) -> None:
        """What :class:`Handoff` does on the loop after a sync enqueue stored ``fresh``."""
        carry = carried(fresh)
        if len(carry) < len(fresh):
            self._lane.note()
        await self._broker.publish([message_of(r) for r in carry])
        await self._broker.notify()

    async def _queue_lost(self, queue: str) -> None:
        """The broker lost a work or delay queue of ``queue`` and the messages in it (see
        :meth:`Connection._missing <offload.backends.rabbitmq.connection.Connection._missing>`):
        store a repair marker, before the queue is declared again, and a worker's recovery
        pass publishes every waiting or running job of ``queue`` again
        (:mod:`offload.backends.brokered.outbox`). If the store does not take it, this raises
        and the queue stays undeclared: the next use finds it gone again."""
        await self._store.enqueue([self._outbox.repair_marker(queue)])

    # -- consuming -------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        """Take up to ``req.limit`` messages from the work queues (paused ones skipped; their
        feeds hand buffered messages back) and start their jobs in the store, leasing exactly
        the delivered jobs. Deliveries whose job runs elsewhere stay parked here (unacked) and
        are tried again at the next claim; with ``req.job_ids`` other deliveries stay buffered.
        See :mod:`offload.backends.rabbitmq.claim`. Jobs with limits come first, from the
        store's own claim (:mod:`offload.backends.brokered.limited`)."""
        return await self._lane.claim_first(req, self._claimer.claim)

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        """Extend the leases in the store. A lease the store no longer grants gives its
        message back to the queue at once (whoever gets it sorts it out)."""
        deadline = time.monotonic() + lease_s
        held = await self._store.heartbeat(leases, lease_s)
        lost: list[Delivery] = []
        for lease in leases:
            if lease not in self._held:
                continue
            if lease.job_id in held:
                self._expires[lease] = deadline
            else:
                lost.append(self._forget(lease))
        await self._broker.settle([], lost)
        return held

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        """Record outcomes in the store, then settle each message: acked once the outcome is
        recorded; RetryAt and delayed Snoozed publish a new delayed message first; Snoozed(0)
        and leases lost meanwhile return the message to the queue."""
        if not results:
            return
        still = await self._still_held([lease for lease, _ in results if lease in self._held])
        later: list[Outgoing] = []
        for lease, outcome in results:
            d = self._held.get(lease)
            if d is None or lease.job_id not in still:
                continue
            delay = _delay_of(outcome)
            if delay is not None and delay > 0:
                later.append(Outgoing(lease.job_id, d.queue, d.priority, ms(delay)))
        await self._broker.publish(later)  # before the store: a crash here only duplicates
        await self._complete_in_store(results)  # (publishes the workflow steps it releases)
        if any(lease not in self._held for lease, _ in results):
            self._lane.note()  # (jobs of the limited lane: their slots are free)
        acks: list[Delivery] = []
        requeues: list[Delivery] = []
        for lease, outcome in results:
            if lease not in self._held:
                continue
            d = self._forget(lease)
            if lease.job_id in still and _delay_of(outcome) != 0:
                acks.append(d)
            else:
                requeues.append(d)
        await self._broker.settle(acks, requeues)
        if requeues:
            await self._broker.notify()

    async def _still_held(self, leases: list[Lease]) -> set[str]:
        """Ids of ``leases`` the store still grants. Within its local deadline a lease can only
        have been lost to a cancel (a final state, so the message may go): asking the store
        is needed only for leases at or past their deadline."""
        now = time.monotonic()
        doubtful = [lease for lease in leases if self._expires[lease] - LEASE_MARGIN_S <= now]
        held = {lease.job_id for lease in leases if self._expires[lease] - LEASE_MARGIN_S > now}
        if doubtful:
            held |= await self._store.heartbeat(doubtful, 60.0)
        return held

    async def recover(self) -> int:
        """Let the store put back its expired leases, and return messages this instance holds
        for leases it stopped extending. The broker itself needs no recovery: it redelivers
        the messages of a lost connection on its own."""
        n = await self._store.recover()
        if n:
            self._lane.note()  # slots of limited jobs may be free again
        now = time.monotonic()
        silent = [lease for lease, at in self._expires.items() if at <= now]
        if silent:
            recs = await get_many(self._store, [lease.job_id for lease in silent])
            gone = [lease for lease, rec in zip(silent, recs, strict=True) if _lost(lease, rec)]
            returned = [self._forget(lease) for lease in gone]
            for queue in {d.queue for d in returned}:
                await self._broker.pause(queue)  # or our own feed would take them straight back
            await self._broker.settle([], returned)
            await self._broker.sync(returned)
        try:
            await self._outbox.sweep(self._broker.connection_name)  # logs what it publishes
        except BackendUnavailable as exc:  # the next pass tries again; the rest is done
            log.debug("outbox sweep failed: %s", exc)
        return n

    def _forget(self, lease: Lease) -> Delivery:
        self._expires.pop(lease, None)
        return self._held.pop(lease)

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        """Consume the (unpaused) ``queues`` while waiting and return when a message arrives
        for one of them (delayed jobs coming back included), when an enqueue anywhere under
        this prefix sends its note, or at ``timeout_s``."""
        claimer = self._claimer
        if any(claimer.parked.get(q) for q in queues):
            timeout_s = min(timeout_s, PARKED_RETRY_S)
        live = [q for q in queues if q not in claimer.paused]
        await self._lane.wait(
            queues, timeout_s, lambda t: self._broker.wait(live, claimer.prefetch, t)
        )

    # -- inspecting and steering: the store's --------------------------------------------

    async def requeue(self, job_id: str) -> JobRecord | None:
        """Queue a dead or cancelled job again in the store and publish its message
        (:func:`~offload.backends.brokered.handoff.requeue_stored`)."""

        async def publish(rec: JobRecord) -> None:
            await self._broker.publish([message_of(rec)])

        return await requeue_stored(
            self._store, self._outbox, self._lane, job_id, publish, self._broker.notify
        )

    async def set_paused(self, queue: str, paused: bool) -> None:
        await self._store.set_paused(queue, paused)
        self._claimer.note_paused(queue, paused)
        if not paused:
            self._lane.note()
            await self._broker.notify()

    # -- tests and tools -------------------------------------------------------------------

    def declared_queues(self) -> set[str]:
        """Names of the broker queues this instance has declared (for cleanup in tests)."""
        return self._broker.declared()

    async def delete_broker_objects(self, queues: Sequence[str]) -> None:
        """Delete these broker queues and the wake exchange of this prefix. For tests and
        teardown tools; not part of the protocol. Deleting a work queue loses its messages."""
        await self._broker.delete_topology(queues)


def _delay_of(outcome: Outcome) -> float | None:
    """The delay before the job runs again; None when it will not run again."""
    if isinstance(outcome, RetryAt | Snoozed):
        return outcome.delay_s
    return None


def _lost(lease: Lease, rec: JobRecord | None) -> bool:
    return rec is None or rec.lease != lease
