"""``beanstalk://`` without a state store: delivery only, each job carried whole in its body.

    beanstalk://127.0.0.1:11300/?prefix=offload

Beanstalkd is the only infrastructure, jobs run at least once, and nothing can be looked up
afterwards. A job's body is the job (:class:`Carried`: task, JSON arguments, attempts begun
before this put, recent errors, the time it may run). What needs a store is declared
unavailable and raises :class:`~offload.errors.CapabilityUnavailable` with the URL option
that adds one: status and results, listing and counts, cancel, retry, delete, purge, pause,
dedup keys, queue depth limits, the worker registry.

The lease of a started job is its reservation: it holds while the connection that made it
lives and its time-to-run is renewed (``touch`` at each heartbeat).

Attempts are counted so that a job that kills its worker every time still dies after
``max_attempts``. Beanstalkd counts, per job, its ``reserves``, ``releases`` and ``buries``
(``stats-job``). This backend gives back every reservation it does not run with ``release``
(or ``bury``), and a retry puts a new job (with the attempts so far) and deletes the old one.
So every reservation of this job other than the current one that was neither released nor
buried began an attempt that was lost (the worker was killed, cut off, or frozen past its
time-to-run): the claim counts them, decided by the rule every engine follows
(:func:`~offload.backends.common.expired_lease`), and a job whose attempts are spent that way
is dead-lettered instead of started.

Dead jobs are **buried** in their tube, their body updated (the last error, the attempts):
put again with a far delay, reserved by id and buried at once, the old job deleted. Read them
with Beanstalkd's own tools (``peek-buried``); ``kick`` one to run it again with its attempts
reset. A body that does not decode is buried as it is.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from offload.backends.beanstalkd import protocol
from offload.backends.beanstalkd.broker import Beanstalk, Delivery, Outgoing
from offload.backends.beanstalkd.options import CARRIED, delay_of, parse_url, pri_of
from offload.backends.beanstalkd.protocol import BeanstalkError
from offload.backends.brokered.storeless import STORE_LESS, StoreLess
from offload.backends.common import expired_lease, masked
from offload.errors import BackendUnavailable, ConfigurationError
from offload.job import (
    AttemptError,
    ClaimRequest,
    JobRecord,
    JobState,
    Lease,
    NewJob,
)
from offload.outcome import Dead, Outcome, RetryAt, Snoozed

log = logging.getLogger("offload.backends.beanstalkd")

HINT = (
    "this beanstalk:// backend has no state store, so it keeps no job status, results or "
    "lists; add one to the URL: ?store=sqlite:///path/jobs.db or ?store=postgresql://..."
)
ERRORS_KEPT = 5  # the most recent attempt errors a body carries (it stays small)
EARLY_HOLD_S = 1.0  # a job this close to its time is held reserved here rather than released
PARK_S = 2  # a copy of a job running here comes back this often until that run ends
FAR_DELAY_S = 2**31  # a dead letter is put this far out, then reserved by id and buried
LATEST_S = 1e11  # times in a body beyond this (year 5138) are garbage


class Carried(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a store-less job: everything a worker needs to run it."""

    id: str
    task: str
    queue: str
    args: msgspec.Raw
    priority: int
    max_attempts: int
    created_at: float
    attempt: int = 0  # attempts begun before this body was put
    errors: tuple[AttemptError, ...] = ()
    run_at: float = 0.0  # not before (epoch s, the producer's clock)
    dead: str | None = None  # why it was dead-lettered (a kicked dead job starts afresh)
    headers: dict[str, str] = {}  # the job's headers, carried as they were enqueued


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Carried).decode


def decode(body: bytes) -> Carried:
    """A body as a job, checked: raises ValueError with the reason."""
    try:
        c = _decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"undecodable job body: {exc}") from None
    if not c.id or not c.task or c.max_attempts < 1 or c.attempt < 0:
        raise ValueError("job body has an empty id or task, max_attempts < 1 or attempt < 0")
    if not (0.0 <= c.run_at < LATEST_S and 0.0 <= c.created_at < LATEST_S):
        raise ValueError("job body has a run_at or created_at out of range")
    return c


def lost_attempts(stats: Mapping[str, str] | None) -> int:
    """Reservations of a job, other than the current one, that began an attempt and lost it
    (neither released nor buried: see the module docstring)."""
    if stats is None:
        return 0
    try:
        n = int(stats["reserves"]) - 1 - int(stats["releases"]) - int(stats["buries"])
    except (KeyError, ValueError):
        return 0
    return max(n, 0)


@dataclass(eq=False)
class _Held:
    delivery: Delivery
    carried: Carried


class DirectBeanstalkBackend(StoreLess):
    """Delivery on Beanstalkd with no state store (see the module docstring)."""

    STORE_HINT = HINT

    def __init__(self, url: str, **options: Any) -> None:
        opts = parse_url(url, options)
        if opts.store:
            raise ConfigurationError("a URL with ?store= is served by StoredBeanstalkBackend")
        self.prefix = opts.prefix
        self._bs = Beanstalk(opts, CARRIED)
        self._url = masked(url)
        self.capabilities = STORE_LESS
        self._held: dict[Lease, _Held] = {}
        self._ids: dict[str, Lease] = {}  # job id -> its lease here: at most one per job
        self._early: list[tuple[float, _Held]] = []  # (run_at, reservation) held until due

    @property
    def url(self) -> str:
        return self._url

    async def open(self) -> None:
        await self._bs.ensure()

    async def close(self) -> None:
        early, self._early = self._early, []
        with contextlib.suppress(BackendUnavailable):  # (a close would count them as lost)
            await self._bs.settle([(h.delivery, _release(h, 0)) for _, h in early])
        self._held.clear()
        self._ids.clear()
        await self._bs.close()

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """Put one Beanstalkd job per job, carrying it whole (one round trip). Not all-or-none:
        if some puts fail, BackendUnavailable is raised and those that succeeded still run.
        ``key`` and ``limits`` need a state store (CapabilityUnavailable)."""
        if any(j.key is not None for j in jobs):
            self._unavailable("deduplicating by key")
        if limits:
            self._unavailable("a queue depth limit")
        if any(j.limits for j in jobs):
            self._unavailable("rate and concurrency limits")
        now = time.time()
        out: list[Outgoing] = []
        recs: list[JobRecord] = []
        for j in jobs:
            run_at = j.run_at if j.run_at is not None else now + j.delay_s
            body = Carried(
                id=j.id, task=j.task, queue=j.queue, args=msgspec.Raw(j.args),
                priority=j.priority, max_attempts=j.max_attempts, created_at=now,
                run_at=run_at if run_at > now else 0.0, headers=j.headers,
            )  # fmt: skip
            out.append(Outgoing(j.queue, _encode(body), pri_of(j.priority), run_at - now))
            recs.append(
                JobRecord(
                    id=j.id,
                    task=j.task,
                    queue=j.queue,
                    args=j.args,
                    state=JobState.SCHEDULED if run_at > now else JobState.QUEUED,
                    priority=j.priority,
                    attempt=0,
                    max_attempts=j.max_attempts,
                    run_at=max(run_at, now),
                    created_at=now,
                    headers=dict(j.headers),
                )
            )
        await self._bs.put(out)
        self._bs.wake.set()
        return recs

    # -- consuming -------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        """Reserve up to ``req.limit`` jobs from the queues' tubes and start them, counting
        lost attempts (see the module docstring). Undecodable bodies are buried; jobs whose
        attempts were spent by lost reservations are dead-lettered; jobs not yet due are held
        (or released with their delay); another job is reserved in their place."""
        self._bs.wake.clear()
        out: list[JobRecord] = []
        now = time.time()
        due = [h for at, h in self._early if at <= now and h.carried.queue in req.queues]
        if req.job_ids is not None:  # a claim naming its jobs takes only those
            named = set(req.job_ids)
            due = [h for h in due if h.carried.id in named]
        due = due[: req.limit]
        if due:
            self._early = [(at, h) for at, h in self._early if h not in due]
        for _ in range(4):
            room = req.limit - len(out) - len(due)
            got, soon = await self._bs.reserve(req.queues, room)
            if soon:
                await self._touch_all()
            candidates = due + await self._sort_out(got, req)
            due = []
            out.extend(self._start(h, req) for h in candidates[: req.limit - len(out)])
            if len(out) >= req.limit or (len(got) < room and not soon) or not got:
                break
        return out

    async def _sort_out(self, got: list[Delivery], req: ClaimRequest) -> list[_Held]:
        """The reservations to start now; the others buried, dead-lettered, held or released."""
        if not got:
            return []
        try:
            stats = await _stats(got)
        except BeanstalkError as exc:
            raise BackendUnavailable(f"beanstalkd stats-job failed: {exc}") from exc
        now = time.time()
        start: list[_Held] = []
        settle: list[tuple[Delivery, bytes]] = []
        dead: list[tuple[Delivery, Carried, str]] = []
        for d, st in zip(got, stats, strict=True):
            try:
                c = decode(d.body)
            except ValueError as exc:
                settle.append((d, protocol.job_command(b"bury", d.bid, pri_of(0))))
                log_bury(d, str(exc))
                continue
            if c.dead is not None:  # a dead letter kicked back: it starts afresh
                c = msgspec.structs.replace(c, attempt=0, dead=None, run_at=0.0)
            c, why = _count_lost(c, lost_attempts(st), now)
            if why is not None:
                dead.append((d, c, why))
                continue
            h = _Held(d, c)
            if (req.job_ids is not None and c.id not in req.job_ids) or c.id in self._ids:
                wait = 0 if c.id not in self._ids else PARK_S
                settle.append((d, _release(h, wait)))
            elif c.run_at > now + EARLY_HOLD_S:
                settle.append((d, _release(h, delay_of(c.run_at - now))))
            elif c.run_at > now:
                self._early.append((c.run_at, h))
            else:
                start.append(h)
        await self._bs.settle(settle)
        for d, c, why in dead:
            await self._bury_as(d, c, why)
        return start

    def _start(self, h: _Held, req: ClaimRequest) -> JobRecord:
        c, now = h.carried, time.time()
        rec = JobRecord(
            id=c.id, task=c.task, queue=c.queue, args=bytes(c.args), state=JobState.RUNNING,
            priority=c.priority, attempt=c.attempt + 1, max_attempts=c.max_attempts,
            run_at=now, created_at=c.created_at, started_at=now, worker_id=req.worker_id,
            lease_expires_at=now + req.lease_s, errors=c.errors, headers=c.headers,
        )  # fmt: skip
        assert rec.lease is not None
        self._held[rec.lease] = h
        self._ids[c.id] = rec.lease
        return rec

    async def _bury_as(self, d: Delivery, c: Carried, why: str) -> None:
        """Dead-letter: the updated body put far out, reserved by id and buried; then the old
        reservation deleted. A failure leaves the old one reserved (it comes back)."""
        body = _encode(msgspec.structs.replace(c, dead=why))
        conn = d.conn
        pri = pri_of(c.priority)
        try:
            (_, put) = await conn.call(
                [protocol.use(self._bs.tube(c.queue)), protocol.put(body, pri, FAR_DELAY_S, 1)]
            )
            conn.used = self._bs.tube(c.queue)
            bid = int(put.expect(b"INSERTED").args[0])
            await conn.call(
                [
                    b"reserve-job %d\r\n" % bid,
                    protocol.job_command(b"bury", bid, pri),
                    protocol.job_command(b"delete", d.bid),
                ]
            )
        except BeanstalkError:
            conn.used = ""
            return

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        """``touch`` each held reservation; a lease holds while its connection lives."""
        held: set[str] = set()
        touch: list[tuple[Delivery, bytes]] = []
        for lease in leases:
            h = self._held.get(lease)
            if h is None:
                continue
            if h.delivery.conn.alive:
                held.add(lease.job_id)
                touch.append((h.delivery, protocol.job_command(b"touch", h.delivery.bid)))
            else:
                self._forget(lease)  # Beanstalkd released it with the connection
        await self._bs.settle(touch)
        return held

    async def _touch_all(self) -> None:
        await self._bs.settle(
            [
                (h.delivery, protocol.job_command(b"touch", h.delivery.bid))
                for h in self._held.values()
            ]
        )

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        """Success and cancel delete the reservation; a retry or delayed snooze puts the job
        again (attempts and error carried) then deletes it; Snoozed(0) releases it; Dead
        buries it with its error. A lease whose connection was lost is a no-op."""
        now = time.time()
        puts: list[Outgoing] = []
        after: list[tuple[Delivery, bytes]] = []
        pending: list[tuple[Lease, _Held]] = []  # settled only by the writes below
        for lease, outcome in results:
            h = self._forget(lease)
            if h is None or not h.delivery.conn.alive:
                continue
            c, d = h.carried, h.delivery
            if isinstance(outcome, Dead):
                c = _with_error(c, lease.attempt, outcome.error, now, lease.worker_id)
                await self._bury_as(d, c, outcome.error)
                continue
            pending.append((lease, h))
            if isinstance(outcome, Snoozed) and outcome.delay_s <= 0:
                after.append((d, _release(h, 0)))  # the attempt is given back
                continue
            if isinstance(outcome, RetryAt):
                c = _with_error(c, lease.attempt, outcome.error, now, lease.worker_id)
                c = msgspec.structs.replace(c, run_at=now + outcome.delay_s)
                puts.append(Outgoing(c.queue, _encode(c), pri_of(c.priority), outcome.delay_s))
            elif isinstance(outcome, Snoozed):
                c = msgspec.structs.replace(
                    c, attempt=max(lease.attempt - 1, 0), run_at=now + outcome.delay_s
                )
                puts.append(Outgoing(c.queue, _encode(c), pri_of(c.priority), outcome.delay_s))
            after.append((d, protocol.job_command(b"delete", d.bid)))
        try:
            await self._bs.put(puts)  # before the deletes: a crash in between only duplicates
        except BaseException:
            # Nothing of ``after`` was sent: these leases still hold their reservations, so a
            # retry of this same completion must find them (else it skips them as done).
            for lease, h in pending:
                self._held[lease] = h
                self._ids[lease.job_id] = lease
            raise
        await self._bs.settle(after)

    def _forget(self, lease: Lease) -> _Held | None:
        h = self._held.pop(lease, None)
        if h is not None and self._ids.get(lease.job_id) == lease:
            del self._ids[lease.job_id]
        return h

    async def recover(self) -> int:
        """Nothing to recover here: Beanstalkd releases the jobs of a lost connection at once
        and those of a silent one after their time-to-run."""
        return 0

    async def run_maintenance(self) -> int:
        return 0

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        """Return when a job of ``queues`` is ready, when this instance enqueued, when a job
        held here comes due, or at ``timeout_s``."""
        due_in = min((at for at, _ in self._early), default=timeout_s + time.time()) - time.time()
        if due_in <= 0:
            return
        await self._bs.wait(queues, min(timeout_s, due_in))

    # -- tests and tools -------------------------------------------------------------------

    def used_tubes(self) -> set[str]:
        """Tubes this instance put to or reserved from (for cleanup in tests)."""
        return set(self._bs.tubes)

    async def delete_tubes(self, tubes: Sequence[str]) -> None:
        """Delete every job of these tubes (tests, tools)."""
        await self._bs.delete_tubes(tubes)


async def _stats(got: list[Delivery]) -> list[dict[str, str] | None]:
    """``stats-job`` of each reservation (all made on one connection), in one round trip."""
    replies = await got[0].conn.call([b"stats-job %d\r\n" % d.bid for d in got])
    out: list[dict[str, str] | None] = []
    for reply in replies:
        ok = reply.expect(b"OK", b"NOT_FOUND").status == b"OK"
        out.append(protocol.parse_stats(reply.body or b"") if ok else None)
    return out


def _release(h: _Held, delay_s: int) -> bytes:
    return protocol.job_command(b"release", h.delivery.bid, pri_of(h.carried.priority), delay_s)


def _count_lost(c: Carried, lost: int, now: float) -> tuple[Carried, str | None]:
    """The body with ``lost`` attempts counted (each decided by the common rule for an
    expired lease), and why it is dead if they spent its attempts."""
    for _ in range(lost):
        fate = expired_lease(c.attempt + 1, c.max_attempts, None, now)
        c = _with_error(c, fate.error.attempt, fate.error.error, now, None)
        if fate.dead:
            return c, f"{fate.error.error}; attempts exhausted"
    return c, None


def _with_error(c: Carried, attempt: int, error: str, now: float, worker: str | None) -> Carried:
    err = AttemptError(attempt=attempt, at=now, error=error, worker_id=worker)
    errors = (*c.errors, err)[-ERRORS_KEPT:]
    return msgspec.structs.replace(c, attempt=attempt, errors=errors, run_at=0.0)


def log_bury(d: Delivery, why: str) -> None:
    log.error("beanstalkd job %d does not decode (%s); burying it", d.bid, why)
