"""``amqp://`` without a state store: delivery only, each job carried whole in its message.

    amqp://guest:guest@127.0.0.1/?prefix=offload

The store-less form of the RabbitMQ backend, for users who want Celery's model: the broker
is the only infrastructure, jobs run at least once, and nothing can be looked up afterwards.
A message's body is the job (task, JSON arguments, attempts begun, max_attempts, recent
errors); its ``message_id`` is the job id. What needs a store is declared unavailable and
raises :class:`~offload.errors.CapabilityUnavailable` with the URL option that adds one:
status and results (``get``, ``wait_done``), listing and counts, cancel, retry, delete,
purge, pause, dedup keys, queue depth limits, the worker registry.

Attempts are counted in the message, so that a job that kills its worker every time still
dies after ``max_attempts``:

* a message that comes back from its delay queues before its ``run_at`` (a delay is a chain
  of power-of-two TTL hops) is published again for the rest of it, not started;
* a claim starts attempt ``carried.attempt + 1``; a retry publishes a new (delayed) message
  with the attempts so far and acks the old one;
* a message that comes back ``redelivered`` was unacknowledged when its channel closed: its
  worker crashed, was killed, or lost its connection, possibly in the middle of the job. That
  delivery counts as an attempt whose lease expired, decided by the rule every engine follows
  (:func:`offload.backends.common.expired_lease`, its error
  :data:`~offload.backends.common.LEASE_EXPIRED_ERROR`): the claim publishes a copy with one
  more attempt (or, at ``max_attempts``, a dead letter) and acks the original, so the count
  survives the next crash too. The broker cannot tell a crash from a connection lost before
  the job started; either counts.
* a worker runs a job once at a time: a copy of a job it is still running (its connection
  dropped and the message came back to it) waits, unacknowledged, until that run ends;
* for that flag to mean a lost delivery, this backend never hands a message back with
  ``basic.nack``: a worker that stops consuming re-publishes what it buffered and acks the
  originals (``Broker(copy_back=...)``); a redelivered message handed back unstarted keeps
  its lost attempt: the copy counts it.

The queues have names of their own (``<prefix>.m.<queue>``; see
:mod:`~offload.backends.rabbitmq.broker`): a store-backed worker would find no job in its store
for these messages, and a store-less one no job in the store-backed messages.

Dead jobs go to the durable queue ``<prefix>.dead.<queue>`` (the job as its body, the last
error in the ``x-offload-error`` header), for a person or a script to read with RabbitMQ's
own tools; nothing consumes it. The lease of a started job is its unacknowledged delivery: it
holds while the connection that received it lives.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from offload.backends.brokered.storeless import STORE_LESS, StoreLess
from offload.backends.common import expired_lease, masked
from offload.backends.rabbitmq.broker import Broker
from offload.backends.rabbitmq.connection import Outgoing
from offload.backends.rabbitmq.delays import PARKED_RETRY_S, ms
from offload.backends.rabbitmq.feed import Delivery
from offload.backends.rabbitmq.options import parse_url
from offload.errors import BackendUnavailable, CapabilityUnavailable, ConfigurationError
from offload.job import (
    AttemptError,
    ClaimRequest,
    JobRecord,
    JobState,
    Lease,
    NewJob,
)
from offload.outcome import Dead, Outcome, RetryAt, Snoozed

HINT = (
    "this amqp:// backend has no state store, so it keeps no job status, results or lists; "
    "add one to the URL: ?store=sqlite:///path/jobs.db or ?store=postgresql://..."
)
LATEST_S = 1e11  # times in a message beyond this (year 5138) are garbage
ERRORS_KEPT = 5  # the most recent attempt errors a message carries (it stays small)
ERROR_HEADER_CHARS = 1000  # x-offload-error is for a glance; the body has the whole error


class Carried(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a store-less message: everything a worker needs to run the job."""

    task: str
    args: msgspec.Raw
    max_attempts: int
    created_at: float
    attempt: int = 0  # attempts begun before this message was published
    errors: tuple[AttemptError, ...] = ()
    run_at: float = 0.0  # not before (epoch s, the publisher's clock): a delay comes back early
    headers: dict[str, str] = {}  # the job's headers, carried as they were enqueued


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Carried).decode


def decode(body: bytes) -> Carried:
    """A message body as a job, checked: raises ValueError with the reason."""
    try:
        c = _decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"undecodable message body: {exc}") from None
    if not c.task or c.max_attempts < 1 or c.attempt < 0:
        raise ValueError("message body has an empty task, max_attempts < 1 or attempt < 0")
    if not (0.0 <= c.run_at < LATEST_S and 0.0 <= c.created_at < LATEST_S):
        raise ValueError("message body has a run_at or created_at out of range")
    return c


def _hand_back_copy(d: Delivery) -> Outgoing:
    """The copy that hands an unstarted delivery back: the same message, or, for one that was
    redelivered, one with its lost attempt counted (else the next crash would not add up)."""
    if d.redelivered:
        with contextlib.suppress(ValueError):
            return _lost_attempt(d, decode(d.body), time.time())
    return Outgoing(d.job_id, d.queue, d.priority, 0, d.body)


@dataclass(eq=False)
class _Held:
    delivery: Delivery
    carried: Carried


class DirectRabbitMQBackend(StoreLess):
    """Delivery on RabbitMQ with no state store (see the module docstring)."""

    STORE_HINT = HINT

    def __init__(self, url: str, **options: Any) -> None:
        amqp_url, opts = parse_url(url, options)
        if "store" in opts:
            raise ConfigurationError("a URL with ?store= is served by RabbitMQBackend")
        self.prefix = opts.get("prefix") or "offload"
        name = f"offload:{self.prefix}:{uuid.uuid4().hex[:8]}"
        timeout_s = float(opts.get("timeout_s", 10))
        self._broker = Broker(amqp_url, self.prefix, name, timeout_s, copy_back=_hand_back_copy)
        self._url = masked(url)
        self.capabilities = STORE_LESS
        self._held: dict[Lease, _Held] = {}
        self._ids: dict[str, Lease] = {}  # job id -> its lease here: at most one per job
        # Deliveries of a job this instance is still running (a copy came back after its
        # connection dropped): a worker runs a job once at a time, so they wait here, unacked.
        self._parked: dict[str, list[Delivery]] = {}
        self._prefetch = 1

    @property
    def url(self) -> str:
        return self._url

    @property
    def connection_name(self) -> str:
        """The client-provided name of this instance's AMQP connection."""
        return self._broker.connection_name

    async def open(self) -> None:
        await self._broker.ensure()

    async def close(self) -> None:
        parked = [d for ds in self._parked.values() for d in ds]
        self._parked.clear()
        with contextlib.suppress(BackendUnavailable):
            await self._broker.hand_back(parked)  # as copies: closing would mark them redelivered
        self._held.clear()
        self._ids.clear()
        await self._broker.close()

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """Publish one message per job (the job in its body) and wait for every confirm.
        Keys and queue depth limits need a store and raise CapabilityUnavailable before
        anything is published. BackendUnavailable when a message was not confirmed (some
        may have been: the jobs of an enqueue that raised may still run)."""
        if any(j.key is not None for j in jobs):
            raise CapabilityUnavailable(f"dedup by key (key=) needs a state store: {HINT}")
        if limits and any(j.queue in limits for j in jobs):
            raise CapabilityUnavailable(f"queue depth limits need a state store: {HINT}")
        if any(j.limits for j in jobs):
            raise CapabilityUnavailable(f"rate and concurrency limits need a state store: {HINT}")
        now = time.time()
        recs: list[JobRecord] = []
        out: list[Outgoing] = []
        for j in jobs:
            run_at = j.run_at if j.run_at is not None else now + j.delay_s
            delay_s = max(run_at - now, 0.0)
            body = Carried(
                task=j.task, args=msgspec.Raw(j.args), max_attempts=j.max_attempts,
                created_at=now, run_at=run_at if delay_s > 0 else 0.0, headers=j.headers,
            )  # fmt: skip
            out.append(Outgoing(j.id, j.queue, j.priority, ms(delay_s), _encode(body)))
            recs.append(
                JobRecord(
                    id=j.id,
                    task=j.task,
                    queue=j.queue,
                    args=j.args,
                    state=JobState.SCHEDULED if delay_s > 0 else JobState.QUEUED,
                    priority=j.priority,
                    attempt=0,
                    max_attempts=j.max_attempts,
                    run_at=max(run_at, now),
                    created_at=now,
                    headers=dict(j.headers),
                )
            )
        await self._broker.publish(out)
        await self._broker.notify()
        return recs

    # -- consuming -------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        """Take up to ``req.limit`` messages from the work queues and start their jobs. A
        redelivered or undecodable message is not started (see the module docstring) and
        another is taken in its place. With ``req.job_ids``, other messages stay buffered."""
        self._broker.wake.clear()
        # Exactly the free slots: what sits in the buffer is charged an attempt if the
        # connection is lost (the broker cannot tell it from a crash), and is copied to the
        # tail of its queue when the worker stops waiting.
        self._prefetch = max(req.limit, 1)
        out: list[JobRecord] = []
        try:
            for queue in req.queues:
                await self._claim_queue(queue, req, out)
        except BaseException:
            for rec in out:  # their connection is gone (or going): the broker has them back
                if rec.lease is not None:
                    self._release(rec.lease)
            raise
        return out

    def _hold(self, lease: Lease, held: _Held) -> None:
        self._held[lease] = held
        self._ids[lease.job_id] = lease

    def _release(self, lease: Lease) -> _Held | None:
        held = self._held.pop(lease, None)
        if held is not None and self._ids.get(lease.job_id) == lease:
            del self._ids[lease.job_id]
        return held

    def _unparked(self, queue: str) -> list[Delivery]:
        """Parked deliveries of ``queue`` whose job is no longer running here (those of a
        lost connection are forgotten: the broker has them back)."""
        parked = [d for d in self._parked.pop(queue, []) if self._alive(d)]
        ready = [d for d in parked if d.job_id not in self._ids]
        if len(ready) < len(parked):
            self._parked[queue] = [d for d in parked if d.job_id in self._ids]
        return ready

    async def _claim_queue(self, queue: str, req: ClaimRequest, out: list[JobRecord]) -> None:
        parked = self._unparked(queue) if req.job_ids is None else []
        try:
            while len(out) < req.limit:
                room = req.limit - len(out)
                taken, parked = parked[:room], parked[room:]
                if len(taken) < room:
                    taken += await self._broker.take(queue, room - len(taken), self._prefetch)
                if req.job_ids is not None:
                    wanted = set(req.job_ids)
                    self._broker.give_back(queue, [d for d in taken if d.job_id not in wanted])
                    taken = [d for d in taken if d.job_id in wanted]
                if not taken:
                    return
                started = await self._start(queue, taken, req)
                out.extend(started)
                if len(started) == len(taken):
                    return
        finally:
            if parked:  # not reached this time
                self._parked.setdefault(queue, []).extend(parked)

    async def _start(
        self, queue: str, deliveries: list[Delivery], req: ClaimRequest
    ) -> list[JobRecord]:
        now = time.time()
        out: list[JobRecord] = []
        again: list[Outgoing] = []  # copies with the lost attempt counted, and dead letters
        settled: list[Delivery] = []
        for d in deliveries:
            try:
                c = decode(d.body)
                if not d.job_id:
                    raise ValueError("message has no message_id (the job id)")
            except ValueError as exc:
                why = str(exc)[:ERROR_HEADER_CHARS]
                again.append(Outgoing(d.job_id, queue, 0, 0, d.body, dead=True, error=why))
                settled.append(d)
                continue
            if c.run_at > now + 0.001:  # back from a delay hop early: wait out the rest
                again.append(Outgoing(d.job_id, queue, d.priority, ms(c.run_at - now), d.body))
                settled.append(d)
                continue
            if d.redelivered:
                again.append(_lost_attempt(d, c, now))
                settled.append(d)
                continue
            if d.job_id in self._ids:
                self._parked.setdefault(queue, []).append(d)
                continue
            rec = _running(d, c, req, now)
            assert rec.lease is not None
            self._hold(rec.lease, _Held(d, c))
            out.append(rec)
        if again:
            try:
                await self._broker.publish(again)
            except BackendUnavailable:
                for rec in out:  # their messages come back with the connection: not ours
                    if rec.lease is not None:
                        self._release(rec.lease)
                raise
        await self._broker.settle(settled, [])
        return out

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        """A lease holds while the connection its message came on lives (nothing to extend:
        the broker keeps an unacknowledged message until its channel closes)."""
        held: set[str] = set()
        for lease in leases:
            h = self._held.get(lease)
            if h is None:
                continue
            if self._alive(h.delivery):
                held.add(lease.job_id)
            else:
                self._release(lease)  # the broker has put its message back
        return held

    def _alive(self, d: Delivery) -> bool:
        return d.generation == self._broker.generation and not d.channel.is_closed

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        """Publish what the outcome asks for (a delayed message for a retry or snooze, a
        dead letter), wait for its confirm, then ack the job's message. A lease whose
        connection was lost is a no-op: the broker has given its message to someone else."""
        taken: list[tuple[Lease, _Held]] = []
        out: list[Outgoing] = []
        for lease, outcome in results:
            h = self._release(lease)
            if h is None or not self._alive(h.delivery):
                continue
            taken.append((lease, h))
            follow = _follow_up(lease, h, outcome, time.time())
            if follow is not None:
                out.append(follow)
        # If the publish fails the connection is dropped with it (Broker.publish), and these
        # leases with it: the broker gives their messages to someone else, so nothing is put
        # back here (a retry by the completer would publish the follow-up a second time).
        await self._broker.publish(out)
        await self._broker.settle([h.delivery for _, h in taken], [])
        if any(not o.dead and o.delay_ms == 0 for o in out):
            await self._broker.notify()

    async def recover(self) -> int:
        """Nothing to recover here: the broker returns the messages of a lost connection."""
        return 0

    async def run_maintenance(self) -> int:
        return 0

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        """Consume ``queues`` while waiting; return when a message arrives for one of them,
        when an enqueue under this prefix sends its note, or at ``timeout_s``."""
        if any(self._parked.get(q) for q in queues):
            timeout_s = min(timeout_s, PARKED_RETRY_S)
        await self._broker.wait(queues, self._prefetch, timeout_s)

    # -- tests and tools -------------------------------------------------------------------

    def declared_queues(self) -> set[str]:
        """Names of the broker queues this instance has declared (for cleanup in tests)."""
        return self._broker.declared()

    async def delete_broker_objects(self, queues: Sequence[str]) -> None:
        """Delete these broker queues and the wake exchange of this prefix (tests, tools)."""
        await self._broker.delete_topology(queues)


def _running(d: Delivery, c: Carried, req: ClaimRequest, now: float) -> JobRecord:
    return JobRecord(
        id=d.job_id, task=c.task, queue=d.queue, args=bytes(c.args), state=JobState.RUNNING,
        priority=d.priority, attempt=c.attempt + 1, max_attempts=c.max_attempts, run_at=now,
        created_at=c.created_at, started_at=now, worker_id=req.worker_id,
        lease_expires_at=now + req.lease_s, errors=c.errors, headers=c.headers,
    )  # fmt: skip


def _with_error(c: Carried, attempt: int, error: str, now: float, worker: str | None) -> Carried:
    err = AttemptError(attempt=attempt, at=now, error=error, worker_id=worker)
    errors = (*c.errors, err)[-ERRORS_KEPT:]
    return msgspec.structs.replace(c, attempt=attempt, errors=errors, run_at=0.0)


def _lost_attempt(d: Delivery, c: Carried, now: float) -> Outgoing:
    """The copy of a redelivered message: its delivery's lease (the channel that held it) is
    gone, so the attempt it began is lost, and the common rule for an expired lease decides
    (again to the queue, or a dead letter after ``max_attempts``)."""
    fate = expired_lease(c.attempt + 1, c.max_attempts, None, now)
    spent = _with_error(c, fate.error.attempt, fate.error.error, now, None)
    error = f"{fate.error.error}; attempts exhausted" if fate.dead else None
    return Outgoing(d.job_id, d.queue, d.priority, 0, _encode(spent), dead=fate.dead, error=error)


def _follow_up(lease: Lease, h: _Held, outcome: Outcome, now: float) -> Outgoing | None:
    """The message an outcome leaves behind, if any (success and cancel leave none)."""
    d, c = h.delivery, h.carried
    if isinstance(outcome, RetryAt):
        body = _with_error(c, lease.attempt, outcome.error, now, lease.worker_id)
        body = msgspec.structs.replace(body, run_at=now + outcome.delay_s)
        return Outgoing(d.job_id, d.queue, d.priority, ms(outcome.delay_s), _encode(body))
    if isinstance(outcome, Snoozed):  # the attempt is given back
        body = msgspec.structs.replace(
            c, attempt=max(lease.attempt - 1, 0), run_at=now + outcome.delay_s
        )
        return Outgoing(d.job_id, d.queue, d.priority, ms(outcome.delay_s), _encode(body))
    if isinstance(outcome, Dead):
        body = _with_error(c, lease.attempt, outcome.error, now, lease.worker_id)
        error = outcome.error[:ERROR_HEADER_CHARS]
        return Outgoing(d.job_id, d.queue, d.priority, 0, _encode(body), dead=True, error=error)
    return None
