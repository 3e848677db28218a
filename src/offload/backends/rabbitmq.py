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

Options (URL query or keyword): ``store`` (required), ``prefix`` (queue-name prefix, default
``offload``), ``timeout_s`` (connect/RPC timeout, default 10). A store URL with its own query
string must be percent-encoded. Other query parameters go to aio-pika; ``heartbeat`` defaults
to :data:`HEARTBEAT_S` instead of the broker's 60 s (see there).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from offload.backends.base import Backend, Capabilities
from offload.backends.rabbitmq_broker import Broker
from offload.backends.rabbitmq_feed import Delivery
from offload.backends.rabbitmq_store import claim_delivered
from offload.errors import BackendUnavailable, ConfigurationError
from offload.job import (
    ClaimRequest,
    JobFilter,
    JobPage,
    JobRecord,
    JobState,
    Lease,
    NewJob,
    WorkerInfo,
)
from offload.outcome import Outcome, RetryAt, Snoozed

_OPTIONS = ("store", "prefix", "timeout_s")
PARKED_RETRY_S = 0.1  # how soon a worker holding parked deliveries asks again
LEASE_MARGIN_S = 1.0  # a lease this close to its local deadline is checked in the store
START_ROUNDS = 4  # rounds of taking messages per claim call (stale ones are dropped)
# AMQP heartbeat (s) unless the URL sets ``heartbeat=``. A frozen or hung worker keeps its
# unacked messages until the broker gives up on its connection, about three heartbeats later
# (~15 s here, ~3 min with RabbitMQ's default 60 s); the store recovers the lease sooner, but
# the job runs elsewhere only once its message is back. The price of a short one: a process
# whose event loop is blocked that long is disconnected and its jobs run again.
HEARTBEAT_S = 5


class RabbitMQBackend:
    """Delivery on RabbitMQ, state in the store of ``?store=`` (see the module docstring)."""

    def __init__(self, url: str, **options: Any) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        opts = {k: query.pop(k) for k in _OPTIONS if k in query}
        opts.update({k: str(v) for k, v in options.items()})
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise ConfigurationError(f"unknown rabbitmq option(s): {', '.join(sorted(unknown))}")
        store_url = opts.get("store")
        if not store_url:
            raise ConfigurationError(
                "amqp:// needs a state store for job status, results and inspection: add "
                "?store=sqlite:///path/jobs.db or ?store=postgresql://... to the URL"
            )
        if urlsplit(store_url).scheme.lower() in ("amqp", "amqps"):
            raise ConfigurationError("the state store of amqp:// cannot be another amqp:// URL")
        from offload.backends import from_url

        self._store: Backend = from_url(store_url)
        self.prefix = opts.get("prefix") or "offload"
        query.setdefault("heartbeat", str(HEARTBEAT_S))
        amqp_url = urlunsplit(parts._replace(query=urlencode(query)))
        name = f"offload:{self.prefix}:{uuid.uuid4().hex[:8]}"
        self._broker = Broker(amqp_url, self.prefix, name, float(opts.get("timeout_s", 10)))
        self._url = _masked(url)
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
        )
        self._held: dict[Lease, Delivery] = {}
        self._expires: dict[Lease, float] = {}  # local clock: when to give a silent lease up
        self._parked: dict[str, list[Delivery]] = {}  # queue -> deliveries awaiting their job
        self._paused: set[str] = set()  # as the last claim saw them: waits skip these feeds
        self._prefetch = 1  # the last claim's free slots: a wait starts feeds with this

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
        await self._store.open()
        await self._broker.ensure()

    async def close(self) -> None:
        self._held.clear()
        self._expires.clear()
        self._parked.clear()
        await self._broker.close()
        await self._store.close()

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """Store the batch in the state store (dedup and limits happen there), then publish
        one message per newly stored job and wait for the broker's confirms. If publishing
        fails, the new records are deleted again and BackendUnavailable is raised."""
        if not jobs:
            return []
        recs = await self._store.enqueue(jobs, limits=limits)
        fresh = [r for r, j in zip(recs, jobs, strict=True) if r.id == j.id]
        fresh.sort(key=lambda r: r.run_at if r.state is JobState.QUEUED else math.inf)
        try:
            await self._broker.publish([_message(r) for r in fresh])
        except BackendUnavailable:
            with contextlib.suppress(BackendUnavailable):
                await self._store.delete([r.id for r in fresh])
            raise
        await self._broker.notify()
        return recs

    # -- consuming -------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        """Take up to ``req.limit`` messages from the work queues (paused ones skipped; their
        feeds hand buffered messages back) and start their jobs in the store, leasing exactly
        the delivered jobs. Deliveries whose job runs elsewhere stay parked here (unacked) and
        are tried again at the next claim; with ``req.job_ids`` other deliveries stay buffered.
        """
        self._broker.wake.clear()  # what this claim does not take wakes the next wait again
        # The first queue's messages are taken while the store says what is paused (one round
        # trip saved per claim); if it turns out paused, they are handed back.
        first = req.queues[0] if req.queues and req.queues[0] not in self._paused else ""
        paused, pre = await asyncio.gather(
            self._store.paused_queues(), self._take_early(first, req), return_exceptions=True
        )
        if isinstance(paused, BaseException):
            if isinstance(pre, list):
                await self._broker.settle([], pre)
            raise paused
        if isinstance(pre, BaseException):
            raise pre
        self._paused, self._prefetch = paused, max(req.limit, 1)
        out: list[JobRecord] = []
        for queue in req.queues:
            if queue in paused:
                if queue == first:
                    self._broker.give_back(queue, pre)
                await self._broker.pause(queue)
                continue
            room = req.limit - len(out)
            if room > 0:
                taken = pre if queue == first else None
                out.extend(await self._claim_queue(queue, room, req, taken))
            elif queue == first:
                self._broker.give_back(queue, pre)
        return out

    async def _take_early(self, queue: str, req: ClaimRequest) -> list[Delivery]:
        if not queue:
            return []
        return await self._broker.take(
            queue, req.limit - len(self._parked.get(queue, [])), req.limit
        )

    async def _claim_queue(
        self, queue: str, room: int, req: ClaimRequest, taken: list[Delivery] | None
    ) -> list[JobRecord]:
        out: list[JobRecord] = []
        parked = self._parked.pop(queue, [])
        for _ in range(START_ROUNDS):
            want = room - len(out)
            if taken is not None:
                fresh, taken = taken, None
            else:
                fresh = await self._broker.take(queue, max(want - len(parked), 0), req.limit)
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
            # another round only when some fresh deliveries were stale (dropped) and room is left
            if not fresh or len(out) >= room or len(started) == len(candidates):
                break
        return out

    def _park(self, queue: str, deliveries: list[Delivery]) -> None:
        if deliveries:
            self._parked.setdefault(queue, []).extend(deliveries)

    async def _start(
        self, queue: str, deliveries: list[Delivery], req: ClaimRequest
    ) -> list[JobRecord]:
        if not deliveries:
            return []
        deadline = time.monotonic() + req.lease_s  # taken before the store's: never later
        started = await claim_delivered(
            self._store, queue, [d.job_id for d in deliveries], req.worker_id, req.lease_s
        )
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
            await self._sort_out(queue, rest)
        return out

    async def _sort_out(self, queue: str, deliveries: list[Delivery]) -> None:
        """Deliveries whose job did not start: drop, delay again, or park."""
        recs = await asyncio.gather(*(self._store.get(d.job_id) for d in deliveries))
        drop: list[Delivery] = []
        back: list[Delivery] = []
        again: list[tuple[Delivery, JobRecord]] = []
        now = time.time()
        for d, rec in zip(deliveries, recs, strict=True):
            if rec is None or rec.state.final:
                drop.append(d)  # cancelled, deleted, finished (or a duplicate of one)
            elif rec.state is JobState.SCHEDULED and rec.run_at > now + 0.001:
                again.append((d, rec))  # came back early: wait out the rest
            elif rec.state is JobState.RUNNING:
                self._park(queue, [d])  # held elsewhere: its outcome decides (at-least-once)
            else:
                back.append(d)  # due but another claimer had it a moment: offer it again
        if again:
            await self._broker.publish([_message(r, now) for _, r in again])
            drop.extend(d for d, _ in again)
        await self._broker.settle(drop, back)

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
        later: list[tuple[str, str, int, int]] = []
        for lease, outcome in results:
            d = self._held.get(lease)
            if d is None or lease.job_id not in still:
                continue
            delay = _delay_of(outcome)
            if delay is not None and delay > 0:
                later.append((lease.job_id, d.queue, d.priority, _ms(delay)))
        await self._broker.publish(later)  # before the store: a crash here only duplicates
        await self._store.complete(results)
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
        now = time.monotonic()
        silent = [lease for lease, at in self._expires.items() if at <= now]
        if silent:
            recs = await asyncio.gather(*(self._store.get(lease.job_id) for lease in silent))
            gone = [lease for lease, rec in zip(silent, recs, strict=True) if _lost(lease, rec)]
            returned = [self._forget(lease) for lease in gone]
            for queue in {d.queue for d in returned}:
                await self._broker.pause(queue)  # or our own feed would take them straight back
            await self._broker.settle([], returned)
            await self._broker.sync(returned)
        return n

    def _forget(self, lease: Lease) -> Delivery:
        self._expires.pop(lease, None)
        return self._held.pop(lease)

    async def run_maintenance(self) -> int:
        """The store's housekeeping (retention, expired worker reports)."""
        return await self._store.run_maintenance()

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        """Consume the (unpaused) ``queues`` while waiting and return when a message arrives
        for one of them (delayed jobs coming back included), when an enqueue anywhere under
        this prefix sends its note, or at ``timeout_s``."""
        if any(self._parked.get(q) for q in queues):
            timeout_s = min(timeout_s, PARKED_RETRY_S)
        live = [q for q in queues if q not in self._paused]
        wake = self._broker.wake
        if wake.is_set() or self._broker.buffered(live):
            wake.clear()
            return
        feeds = await self._broker.listen(live, self._prefetch)
        try:
            if not self._broker.buffered(live):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=max(timeout_s, 0.0))
        finally:
            for feed in feeds:
                feed.done()
        wake.clear()

    async def wait_done(self, job_id: str, timeout_s: float) -> JobRecord | None:
        return await self._store.wait_done(job_id, timeout_s)

    # -- inspecting and steering: the store's --------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._store.get(job_id)

    async def list_jobs(self, flt: JobFilter) -> JobPage:
        return await self._store.list_jobs(flt)

    async def counts(self) -> dict[str, dict[JobState, int]]:
        return await self._store.counts()

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel in the store; the job's message is dropped when it is next delivered."""
        return await self._store.cancel(job_id)

    async def retry(self, job_id: str) -> JobRecord | None:
        """Queue a dead or cancelled job again in the store and publish its message. If the
        publish fails the job is cancelled again (so it can be retried later) and
        BackendUnavailable is raised."""
        rec = await self._store.retry(job_id)
        if rec is None:
            return None
        try:
            await self._broker.publish([_message(rec)])
        except BackendUnavailable:
            with contextlib.suppress(BackendUnavailable):
                await self._store.cancel(job_id)
            raise
        await self._broker.notify()
        return rec

    async def delete(self, job_ids: Sequence[str]) -> int:
        return await self._store.delete(job_ids)

    async def purge(
        self, states: Sequence[JobState], *, older_than_s: float = 0.0, queue: str | None = None
    ) -> int:
        return await self._store.purge(states, older_than_s=older_than_s, queue=queue)

    async def set_paused(self, queue: str, paused: bool) -> None:
        await self._store.set_paused(queue, paused)
        if not paused:
            await self._broker.notify()

    async def paused_queues(self) -> set[str]:
        return await self._store.paused_queues()

    async def report_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        await self._store.report_worker(info, ttl_s)

    async def remove_worker(self, worker_id: str) -> None:
        await self._store.remove_worker(worker_id)

    async def workers(self) -> list[WorkerInfo]:
        return await self._store.workers()

    # -- tests and tools -------------------------------------------------------------------

    def declared_queues(self) -> set[str]:
        """Names of the broker queues this instance has declared (for cleanup in tests)."""
        return self._broker.declared()

    async def delete_broker_objects(self, queues: Sequence[str]) -> None:
        """Delete these broker queues and the wake exchange of this prefix. For tests and
        teardown tools; not part of the protocol. Deleting a work queue loses its messages."""
        await self._broker.delete_topology(queues)


def _message(rec: JobRecord, now: float | None = None) -> tuple[str, str, int, int]:
    """The broker message of a job record: due now, or after its remaining delay."""
    delay_s = 0.0
    if rec.state is JobState.SCHEDULED:
        # the store's own clock: run_at relative to created_at, or to now for a re-delay
        delay_s = rec.run_at - (rec.created_at if now is None else now)
    return (rec.id, rec.queue, rec.priority, _ms(delay_s))


def _ms(delay_s: float) -> int:
    return max(0, math.ceil(delay_s * 1000))


def _delay_of(outcome: Outcome) -> float | None:
    """The delay before the job runs again; None when it will not run again."""
    if isinstance(outcome, RetryAt | Snoozed):
        return outcome.delay_s
    return None


def _lost(lease: Lease, rec: JobRecord | None) -> bool:
    return rec is None or rec.lease != lease


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
