"""``beanstalk://host:11300/?store=<url>`` — Beanstalkd carries delivery; a state store keeps
the jobs.

Each runnable job is one Beanstalkd job in the tube ``<prefix>.q.<queue>`` whose body names it
(``<job id> <priority> <queue>``), put with offload's priority (9 - priority: Beanstalkd's 0
is the most urgent), the job's delay (whole seconds, rounded down: a job that comes early by
the fraction waits in the worker that reserved it) and a time-to-run of ``ttr_s``. A worker
reserves jobs, starts them in the store, touches them at each heartbeat and deletes them once
the outcome is recorded; a retry or snooze releases the job with its delay.

Job state (status, attempts, results, errors, the dead list, listing, pause, workers) lives in
the **state store** named by ``?store=``: any other offload backend URL, used only through the
Backend protocol (:mod:`offload.backends.brokered`). The store's record is the truth and its
lease is the fencing token; the reservation is how the job travels and how it comes back when
a worker dies (Beanstalkd releases the jobs of a closed connection at once, and those of a
silent one after their time-to-run).

Without ``?store=``, :func:`beanstalk_backend` (what ``from_url`` calls) gives the store-less
backend of :mod:`offload.backends.beanstalkd.direct` instead.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from offload.backends.base import Backend, Capabilities
from offload.backends.beanstalkd import protocol
from offload.backends.beanstalkd.broker import Beanstalk, Delivery, Outgoing
from offload.backends.beanstalkd.claim import Claimer, outgoing_of, parse_body
from offload.backends.beanstalkd.options import STORED, delay_of, parse_url
from offload.backends.brokered.delegation import StoreDelegation
from offload.backends.brokered.handoff import Handoff, enqueue_stored, requeue_stored
from offload.backends.brokered.limited import LimitedLane, carried
from offload.backends.brokered.outbox import ORPHAN_AFTER_S, Outbox
from offload.backends.brokered.store import get_many
from offload.backends.brokered.workflows import StoreWorkflows
from offload.backends.common import LEASE_EXPIRED_ERROR, masked
from offload.errors import BackendUnavailable, ConfigurationError
from offload.job import (
    ClaimRequest,
    JobFilter,
    JobRecord,
    JobState,
    Lease,
    NewJob,
)
from offload.outcome import Outcome, RetryAt, Snoozed

__all__ = ["StoredBeanstalkBackend", "beanstalk_backend"]

log = logging.getLogger("offload.backends.beanstalkd")

LEASE_MARGIN_S = 1.0  # a lease this close to its local deadline is checked in the store
RESCUE_SCAN = 500  # queued jobs looked at after a recovery put some back (see recover)
RESCUE_WINDOW_S = 60.0  # "just put back": lease expired this recently (allows for clock skew)


def beanstalk_backend(url: str, **options: Any) -> Backend:
    """The backend of a ``beanstalk://`` URL: :class:`StoredBeanstalkBackend` with
    ``?store=``, the store-less
    :class:`~offload.backends.beanstalkd.direct.DirectBeanstalkBackend` without."""
    if parse_url(url, options).store:
        return StoredBeanstalkBackend(url, **options)
    from offload.backends.beanstalkd.direct import DirectBeanstalkBackend

    return DirectBeanstalkBackend(url, **options)


class _Publisher:
    """The outbox's :class:`~offload.backends.brokered.publisher.JobPublisher`."""

    def __init__(self, beanstalk: Beanstalk) -> None:
        self._bs = beanstalk

    async def publish_jobs(self, jobs: Sequence[JobRecord], now: float | None = None) -> None:
        await self._bs.put([outgoing_of(r, now) for r in jobs])

    async def notify(self) -> None:
        """Nothing to do: a put wakes every worker blocked in a reserve of its tube."""


class StoredBeanstalkBackend(StoreDelegation, StoreWorkflows):
    """Delivery on Beanstalkd, state in the store of ``?store=`` (see the module docstring)."""

    def __init__(self, url: str, **options: Any) -> None:
        opts = parse_url(url, options)
        if not opts.store:
            raise ConfigurationError(
                "StoredBeanstalkBackend needs a state store: add ?store=sqlite:///path/jobs.db "
                "or ?store=postgresql://... to the URL"
            )
        if urlsplit(opts.store).scheme.lower() == "beanstalk":
            raise ConfigurationError("the state store of beanstalk:// cannot be beanstalk://")
        from offload.backends import from_url

        self._store: Backend = from_url(opts.store)
        self.prefix = opts.prefix
        self._bs = Beanstalk(opts, STORED)
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
        self._claimer = Claimer(self._store, self._bs, self._held, self._expires)
        self._put_back: dict[str, int] = {}  # jobs the last recovery put back -> their attempt
        self._outbox = Outbox(
            self._store, _Publisher(self._bs), opts.orphan_after_s or ORPHAN_AFTER_S
        )
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

    async def open(self) -> None:
        self._outbox.start()
        await self._store.open()
        await self._bs.ensure()
        self._handoff.opened()

    async def close(self) -> None:
        await self._handoff.close()  # its publishes in flight, before the broker goes
        with contextlib.suppress(BackendUnavailable):
            await self._outbox.close()
        self._held.clear()
        self._expires.clear()
        self._claimer.clear()
        await self._bs.close()  # (Beanstalkd releases what this instance still held)
        await self._store.close()

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """Store the batch in the state store (dedup and limits happen there) with an outbox
        marker, then put one Beanstalkd job per newly stored job without limits, in one round
        trip (:func:`~offload.backends.brokered.handoff.enqueue_stored`). Jobs with limits
        are not put: the store's claim takes them (:mod:`offload.backends.brokered.limited`)."""
        if not jobs:
            return []
        recs = await enqueue_stored(
            self._store,
            self._outbox,
            jobs,
            limits,
            lambda fresh: self._put([outgoing_of(r) for r in fresh]),
        )
        if any(j.limits for j in jobs):
            self._lane.note()
        self._bs.wake.set()
        return recs

    async def _put(self, items: Sequence[Outgoing]) -> None:
        await self._bs.put(items)

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
        await self._bs.put([outgoing_of(r) for r in carry])
        self._bs.wake.set()

    # -- consuming -------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        """Reserve up to ``req.limit`` jobs from the (unpaused) queues' tubes and start them in
        the store, leasing exactly the reserved jobs (see
        :mod:`offload.backends.beanstalkd.claim`). Jobs with limits come first, from the
        store's own claim (:mod:`offload.backends.brokered.limited`)."""
        return await self._lane.claim_first(req, self._claimer.claim)

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        """Extend the leases in the store and ``touch`` their reservations. A lease the store
        no longer grants releases its job at once (whoever reserves it sorts it out)."""
        deadline = time.monotonic() + lease_s
        held = await self._store.heartbeat(leases, lease_s)
        commands: list[tuple[Delivery, bytes]] = []
        for lease in leases:
            d = self._held.get(lease)
            if d is None:
                continue
            if lease.job_id in held:
                self._expires[lease] = deadline
                commands.append((d, protocol.job_command(b"touch", d.bid)))
            else:
                commands.append((self._forget(lease), _release(d, 0)))
        await self._bs.settle(commands)
        return held

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        """Record outcomes in the store, then settle each reservation: deleted once the
        outcome is recorded; RetryAt and Snoozed release it with their delay; a lease lost
        meanwhile releases it at once."""
        if not results:
            return
        still = await self._still_held([lease for lease, _ in results if lease in self._held])
        await self._complete_in_store(results)  # (publishes the workflow steps it releases)
        if any(lease not in self._held for lease, _ in results):
            self._lane.note()  # (jobs of the limited lane: their slots are free)
        commands: list[tuple[Delivery, bytes]] = []
        for lease, outcome in results:
            if lease not in self._held:
                continue
            d = self._forget(lease)
            delay = _delay_of(outcome)
            if lease.job_id not in still:
                commands.append((d, _release(d, 0)))
            elif delay is None:
                commands.append((d, protocol.job_command(b"delete", d.bid)))
            else:
                commands.append((d, _release(d, delay_of(delay))))
        await self._bs.settle(commands)

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
        """Let the store put back its expired leases; put a fresh message for each job put
        back by the previous pass that nobody has started since (below); release the
        reservations this instance holds for leases it stopped extending; put the jobs of
        producers that died between storing and putting (the outbox).

        Why a fresh message: the message of a job whose worker froze (SIGSTOP, a hung VM)
        stays reserved by that worker's open connection until its time-to-run runs out, and
        beanstalkd 1.12 sometimes never times such a reservation out (a reservation handed
        over while the connection waited in a reserve, then touched, was seen to stay
        reserved, ``time-left`` negative, until the worker resumed). A job put back that is
        still waiting one recovery pass later gets a fresh message and runs elsewhere, as on
        every other backend; the old message is deleted or parked when it comes back (the
        store's lease decides). A killed worker's messages come back at once (its connection
        closed), so its jobs start before the next pass and get no spare."""
        await self._rescue_stuck()
        n = await self._store.recover()
        if n:
            self._lane.note()  # slots of limited jobs may be free again
            self._put_back = await self._just_put_back()
        now = time.monotonic()
        silent = [lease for lease, at in self._expires.items() if at <= now]
        if silent:
            recs = await get_many(self._store, [lease.job_id for lease in silent])
            gone = [lease for lease, rec in zip(silent, recs, strict=True) if _lost(lease, rec)]
            await self._bs.settle([(d, _release(d, 0)) for d in map(self._forget, gone)])
        with contextlib.suppress(BackendUnavailable):  # the next pass tries again
            await self._outbox.sweep(f"beanstalk:{self.prefix}")
        return n

    async def _rescue_stuck(self) -> None:
        """Put a fresh message for each job the previous pass put back that is still queued
        with the same attempt (see :meth:`recover`)."""
        put_back, self._put_back = self._put_back, {}
        if not put_back:
            return
        recs = await get_many(self._store, list(put_back))
        stuck = [
            r
            for r in carried([r for r in recs if r is not None])  # (limits: no message)
            if r.state is JobState.QUEUED and r.attempt == put_back[r.id]
        ]
        if stuck:
            log.warning("putting a fresh message for %d job(s) nobody started", len(stuck))
            try:
                await self._bs.put([outgoing_of(r) for r in stuck])
            except BackendUnavailable:
                # Their old messages may be held by a reservation that never times out (see
                # recover): try again at the next pass rather than leave them to it.
                self._put_back.update({r.id: r.attempt for r in stuck})

    async def _just_put_back(self) -> dict[str, int]:
        """Job id -> attempt of the queued jobs whose last attempt was lost to an expired lease
        within RESCUE_WINDOW_S (up to RESCUE_SCAN, newest first). Asked only after a recovery
        put jobs back (rare: a listing by state can be costly on a large store)."""
        page = await self._store.list_jobs(JobFilter(state=JobState.QUEUED, limit=RESCUE_SCAN))
        since = time.time() - RESCUE_WINDOW_S
        return {
            j.id: j.attempt
            for j in page.jobs
            if j.errors and j.errors[-1].error == LEASE_EXPIRED_ERROR and j.errors[-1].at > since
        }

    def _forget(self, lease: Lease) -> Delivery:
        self._expires.pop(lease, None)
        return self._held.pop(lease)

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        """Return when a job of the (unpaused) ``queues`` is ready (delayed ones coming due
        included), when this instance enqueued, or at ``timeout_s``."""
        claimer = self._claimer
        live = [q for q in queues if q not in claimer.paused]
        due_in = claimer.next_due_in()
        if due_in <= 0:
            return
        await self._lane.wait(queues, min(timeout_s, due_in), lambda t: self._bs.wait(live, t))

    # -- inspecting and steering: the store's --------------------------------------------

    async def requeue(self, job_id: str) -> JobRecord | None:
        """Queue a dead or cancelled job again in the store and put its message
        (:func:`~offload.backends.brokered.handoff.requeue_stored`)."""

        async def put(rec: JobRecord) -> None:
            await self._bs.put([outgoing_of(rec)])

        async def woke() -> None:
            self._bs.wake.set()

        return await requeue_stored(self._store, self._outbox, self._lane, job_id, put, woke)

    async def set_paused(self, queue: str, paused: bool) -> None:
        await self._store.set_paused(queue, paused)
        self._claimer.note_paused(queue, paused)
        if not paused:
            self._lane.note()
            self._bs.wake.set()

    # -- tests and tools -------------------------------------------------------------------

    def used_tubes(self) -> set[str]:
        """Tubes this instance put to or reserved from (for cleanup in tests)."""
        return set(self._bs.tubes)

    async def delete_tubes(self, tubes: Sequence[str]) -> None:
        """Delete every job of these tubes. For tests and teardown tools; not part of the
        protocol."""
        await self._bs.delete_tubes(tubes)


def _release(d: Delivery, delay_s: int) -> bytes:
    parsed = parse_body(d.body)
    return protocol.job_command(b"release", d.bid, parsed[1] if parsed else 0, delay_s)


def _delay_of(outcome: Outcome) -> float | None:
    """The delay before the job runs again; None when it will not run again."""
    if isinstance(outcome, RetryAt | Snoozed):
        return outcome.delay_s
    return None


def _lost(lease: Lease, rec: JobRecord | None) -> bool:
    return rec is None or rec.lease != lease
