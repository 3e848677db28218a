"""Claiming for ``beanstalk://?store=``: from reserved Beanstalkd jobs to jobs started in the
state store.

A claim reserves as many jobs as it has room for (one round trip) and leases exactly their
offload jobs in the store. A reservation whose job did not start is sorted out by the store's
record: deleted (the job is finished, cancelled or deleted, or a spare message of one, or it
carries limits: the store's claim takes those, see :mod:`offload.backends.brokered.limited`),
held here until due if that is within :data:`EARLY_HOLD_S` (Beanstalkd's delays are whole
seconds, rounded down, so a retry after 0.3 s arrives at once and waits here), released with
the rest of its delay if it is later, released after :data:`PARK_S` (the
job runs elsewhere: if that worker dies, this message runs it), buried (its body is not a
message of this form), or released at once (due, but the store refused it: a paused queue).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence

from offload.backends.base import Backend
from offload.backends.beanstalkd import protocol
from offload.backends.beanstalkd.broker import Beanstalk, Delivery, Outgoing
from offload.backends.beanstalkd.options import delay_of, pri_of
from offload.backends.brokered.store import claim_delivered, get_many
from offload.errors import BackendUnavailable
from offload.job import ClaimRequest, JobRecord, JobState, Lease

log = logging.getLogger("offload.backends.beanstalkd")

START_ROUNDS = 4  # rounds of reserving per claim (stale messages are sorted out)
PARK_S = 2  # a duplicate of a running job comes back this often until that job ends
# While no queue is known to be paused, the store is asked again only this often; a due job
# the store refuses to start asks at once (the store never leases a paused queue's job).
PAUSED_TRUST_S = 1.0
EARLY_HOLD_S = 1.0  # a job this close to its time is held reserved here rather than released

Parsed = tuple[Delivery, str, int, str]  # a reservation, its job id, priority and queue


def body_of(rec: JobRecord) -> bytes:
    """The message of a stored job: ``<job id> <beanstalkd priority> <queue>``."""
    return b"%s %d %s" % (rec.id.encode(), pri_of(rec.priority), rec.queue.encode())


def outgoing_of(rec: JobRecord, now: float | None = None) -> Outgoing:
    """The put of a job record: due now, or after its remaining delay (store's clock)."""
    delay_s = 0.0
    if rec.state is JobState.SCHEDULED:
        delay_s = rec.run_at - (rec.created_at if now is None else now)
    return Outgoing(rec.queue, body_of(rec), pri_of(rec.priority), delay_s)


def parse_body(body: bytes) -> tuple[str, int, str] | None:
    """(job id, priority, queue) of a message body; None if it is not one of this form."""
    try:
        job_id, pri, queue = body.decode().split(" ", 2)
        return job_id, int(pri), queue
    except (UnicodeDecodeError, ValueError):
        return None


class Claimer:
    """The claim path of one backend instance; fills the backend's lease tables ``held``
    (lease -> its reservation) and ``expires`` (lease -> local deadline)."""

    def __init__(
        self,
        store: Backend,
        beanstalk: Beanstalk,
        held: dict[Lease, Delivery],
        expires: dict[Lease, float],
    ) -> None:
        self._store = store
        self._bs = beanstalk
        self._held = held
        self._expires = expires
        self.paused: set[str] = set()
        self._trust_until = -math.inf
        self.early: list[tuple[float, Parsed]] = []  # (run_at, reservation) held until due

    def next_due_in(self) -> float:
        """Seconds until the earliest held job is due (inf when none is held)."""
        return min((at for at, _ in self.early), default=math.inf) - time.time()

    def clear(self) -> None:
        self.early.clear()

    def note_paused(self, queue: str, paused: bool) -> None:
        """This instance paused or resumed ``queue`` in the store."""
        self._set_paused(self.paused | {queue} if paused else self.paused - {queue})

    def _set_paused(self, paused: set[str]) -> None:
        self.paused = paused
        self._trust_until = time.monotonic() + PAUSED_TRUST_S

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        """See :meth:`StoredBeanstalkBackend.claim`."""
        self._bs.wake.clear()
        if self.paused or time.monotonic() >= self._trust_until:
            self._set_paused(await self._store.paused_queues())
        out: list[JobRecord] = []
        due = self._take_early(req)
        for _ in range(1 if req.job_ids is not None else START_ROUNDS):
            queues = [q for q in req.queues if q not in self.paused]
            try:
                got, soon = await self._bs.reserve(queues, req.limit - len(out) - len(due))
                if soon:
                    await self.touch_all()
                parsed, refused = self._parse(got, req)
                await self._bs.settle(refused)
                started = await self._start(due + parsed, req)
                tried = len(due) + len(parsed) + len(refused)
                due = []
            except BackendUnavailable:
                if not out:
                    raise
                break  # jobs started already are returned; the next claim meets the error
            out.extend(started)
            if len(out) >= req.limit or (len(started) == tried and not soon):
                break
        return out

    async def touch_all(self) -> None:
        """Touch every held reservation (Beanstalkd said one nears its time-to-run)."""
        await self._bs.settle(
            [(d, protocol.job_command(b"touch", d.bid)) for d in self._held.values()]
        )

    def _take_early(self, req: ClaimRequest) -> list[Parsed]:
        """The held jobs of ``req``'s unpaused queues that are due now."""
        now = time.time()
        wanted = {q for q in req.queues if q not in self.paused}
        due = [p for at, p in self.early if at <= now and p[3] in wanted]
        if req.job_ids is not None:  # a claim naming its jobs takes only those
            named = set(req.job_ids)
            due = [p for p in due if p[1] in named]
        due = due[: req.limit]
        if due:
            self.early = [(at, p) for at, p in self.early if p not in due]
        return due

    def _parse(
        self, got: list[Delivery], req: ClaimRequest
    ) -> tuple[list[Parsed], list[tuple[Delivery, bytes]]]:
        """Reservations as (delivery, job id, priority, queue); those that are not messages of
        this form are buried, those not among ``req.job_ids`` released."""
        parsed: list[Parsed] = []
        bury: list[tuple[Delivery, bytes]] = []
        for d in got:
            p = parse_body(d.body)
            if p is None:
                log.error("beanstalkd job %d is not an offload message; burying it", d.bid)
                bury.append((d, protocol.job_command(b"bury", d.bid, 0)))
            elif req.job_ids is not None and p[0] not in req.job_ids:
                bury.append((d, protocol.job_command(b"release", d.bid, p[1], 0)))
            else:
                parsed.append((d, *p))
        return parsed, bury

    async def _start(self, parsed: list[Parsed], req: ClaimRequest) -> list[JobRecord]:
        if not parsed:
            return []
        deadline = time.monotonic() + req.lease_s  # taken before the store's: never later
        by_queue: dict[str, list[str]] = {}
        for _, job_id, _, queue in parsed:
            by_queue.setdefault(queue, []).append(job_id)
        try:
            results = await asyncio.gather(
                *(
                    claim_delivered(self._store, q, ids, req.worker_id, req.lease_s)
                    for q, ids in by_queue.items()
                )
            )
        except BaseException:
            # Not started, or started with the answer lost: the messages go back and the
            # store decides at their next reservation.
            await self._bs.settle(
                [(d, protocol.job_command(b"release", d.bid, pri, 0)) for d, _, pri, _ in parsed]
            )
            raise
        started = {rec.id: rec for part in results for rec in part.values()}
        out: list[JobRecord] = []
        rest: list[Parsed] = []
        for p in parsed:
            d, job_id = p[0], p[1]
            rec = started.pop(job_id, None)
            if rec is None or rec.lease is None:
                rest.append(p)
                continue
            self._held[rec.lease] = d
            self._expires[rec.lease] = deadline
            out.append(rec)
        if rest:
            await self._sort_out(rest)
        return out

    async def _sort_out(self, rest: Sequence[Parsed]) -> None:
        """Reservations whose job did not start (see the module docstring)."""
        try:
            recs = await get_many(self._store, [p[1] for p in rest])
        except BaseException:
            await self._bs.settle(
                [(d, protocol.job_command(b"release", d.bid, pri, 0)) for d, _, pri, _ in rest]
            )
            raise
        now = time.time()
        commands: list[tuple[Delivery, bytes]] = []
        refused = False
        for p, rec in zip(rest, recs, strict=True):
            d, pri = p[0], p[2]
            if rec is None or rec.state.final or rec.limits:  # (limits: brokered.limited)
                commands.append((d, protocol.job_command(b"delete", d.bid)))
            elif rec.state is JobState.SCHEDULED and now < rec.run_at < now + EARLY_HOLD_S:
                self.early.append((rec.run_at, p))
            elif rec.state is JobState.SCHEDULED and rec.run_at > now:
                later = delay_of(rec.run_at - now)
                commands.append((d, protocol.job_command(b"release", d.bid, pri, later)))
            elif rec.state is JobState.RUNNING:
                commands.append((d, protocol.job_command(b"release", d.bid, pri, PARK_S)))
            else:
                refused = True
                commands.append((d, protocol.job_command(b"release", d.bid, pri, 0)))
        if refused:
            self._trust_until = -math.inf  # ask the store at the next claim
            try:
                self._set_paused(await self._store.paused_queues())
            except BackendUnavailable:
                pass
        await self._bs.settle(commands)
