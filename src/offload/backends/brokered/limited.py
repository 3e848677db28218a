"""Rate and concurrency limits on a broker with a state store: the *limited lane*.

A broker hands out whatever message comes next; it cannot hold one back for a limit without
delivering it and taking it back, the claim-and-give-back loop that limits at claim exist to
avoid. So a job that carries limits never travels through the broker at all: its enqueue (a
retry, a snooze, a requeue, a workflow step released) writes it to the state store only, with
no message and no outbox entry, and a worker's claim asks the store for it directly
(``ClaimRequest.limited_only``), where the store's own claim enforces its limits atomically as
on every engine (the writer thread on SQLite, ``gate_claim`` on PostgreSQL, ``claim.lua`` on
Redis). Jobs without limits keep flowing through the broker as before. A held job is not
claimed (no attempt used); a killed worker's slot comes back when the store's ``recover``
puts its job back; the store's lease fences every completion, as for any job.

Waiting: a limited job becomes claimable through the store (an enqueue or a completion in any
process notifies the store's waiters; a rate window ends at a time the store's last claim
knows), so a worker waits on the store's ``wait_for_work`` and the broker's wait at once and
takes the first to return. The store's wait counts every waiting job of the queues as work,
including jobs without limits whose messages are elsewhere (in another worker's prefetch, a
delay queue, or lost with a producer until the outbox publishes them): it may then return at
once, again and again. :class:`LimitedLane` notices a store wait that returned at once twice
in a row with nothing to claim after it, and waits on the broker alone for :data:`HOT_WAIT_S`
before trying the store's wait again: a few claims a second at worst, never a spin.

Asking the store costs a round trip per claim. A worker whose limited lane found nothing asks
again at once after a wake-up by the store (or a poll), after local news (an enqueue, a
completion, a recovery here), at every claim while limited jobs were claimed in the last
:data:`ACTIVE_S`, and otherwise every :data:`POLL_S`: a worker busy with broker messages learns
of limited jobs made claimable by other processes at least that often (an idle one, through
the store's wake-ups, at once). A wait ended by a broker message alone does not ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from offload.backends.base import Backend
from offload.errors import BackendUnavailable
from offload.job import ClaimRequest, JobRecord, NewJob

POLL_S = 1.0  # a busy worker asks the store for limited jobs at least this often
ACTIVE_S = 2.0  # after claiming limited jobs, every claim asks the store for this long
QUICK_S = 0.05  # a store wait that returned within this long returned "at once"
HOT_AFTER = 2  # store waits returning at once, with nothing claimed after, before HOT_WAIT_S
HOT_WAIT_S = 1.0  # how long the broker's wait alone stands in for the store's then
POLL_FRACTION = 0.9  # a wait this close to its timeout was a poll: ask the store after it

BrokerWait = Callable[[float], Awaitable[None]]
BrokerClaim = Callable[[ClaimRequest], Awaitable[list[JobRecord]]]


def carried(records: Sequence[JobRecord]) -> list[JobRecord]:
    """The records whose jobs travel through the broker: those without limits."""
    return [r for r in records if not r.limits]


def carried_ids(jobs: Sequence[NewJob]) -> list[str]:
    """The ids of the new jobs that travel through the broker (an outbox marker names these)."""
    return [j.id for j in jobs if not j.limits]


class LimitedLane:
    """The limited lane of one broker backend instance (see the module docstring)."""

    def __init__(self, store: Backend) -> None:
        self._store = store
        self._armed = True  # ask the store at the next claim
        self._active_until = -1.0  # monotonic: limited jobs claimed lately, ask at every claim
        self._asked_at = -1.0  # monotonic: the last time the store was asked
        self._quick = False  # the last wait was the store's, and it returned at once
        self._quick_empty = 0  # such waits in a row that were followed by an empty claim
        self._hot_until = -1.0  # monotonic: until then, waits skip the store's wait

    @property
    def enabled(self) -> bool:
        """Whether the store enforces limits (otherwise no limited job is ever stored)."""
        return self._store.capabilities.limits

    def note(self) -> None:
        """Something here may have made a limited job claimable (an enqueue, a completion, a
        cancel, a recovery): the next claim asks the store."""
        self._armed = True

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        """The store's claim of up to ``req.limit`` due jobs with limits, when worth asking.
        A claim naming its jobs (a broker's deliveries) takes none here."""
        if not self.enabled or req.job_ids is not None or req.limit <= 0:
            return []
        now = time.monotonic()
        if not (self._armed or now < self._active_until or now - self._asked_at >= POLL_S):
            return []
        self._armed = False
        self._asked_at = now
        got = await self._store.claim(msgspec.structs.replace(req, limited_only=True))
        if got:
            self._active_until = time.monotonic() + ACTIVE_S
            self._armed = len(got) >= req.limit  # there may be more
        if self._quick:
            self._quick_empty = 0 if got else self._quick_empty + 1
        self._quick = False
        return got

    async def claim_first(self, req: ClaimRequest, broker_claim: BrokerClaim) -> list[JobRecord]:
        """A broker backend's claim: jobs with limits first (:meth:`claim`), then
        ``broker_claim`` for the slots left. Jobs started before a failure are returned (they
        run; the next claim meets the error again)."""
        limited = await self.claim(req)
        if len(limited) >= req.limit:
            return limited
        try:
            rest = await broker_claim(
                msgspec.structs.replace(req, limit=req.limit - len(limited)) if limited else req
            )
        except BackendUnavailable:
            if limited:
                return limited
            raise
        return limited + rest

    async def wait(self, queues: Sequence[str], timeout_s: float, broker_wait: BrokerWait) -> None:
        """Return when the broker's wait or the store's ``wait_for_work`` returns (or at
        ``timeout_s``). The next claim asks the store unless only a broker message ended the
        wait (a drain of broker messages then costs no store claim per wake-up)."""
        if not self.enabled:
            await broker_wait(timeout_s)
        elif self._quick_empty >= HOT_AFTER or time.monotonic() < self._hot_until:
            if self._quick_empty >= HOT_AFTER:
                self._quick_empty = 0
                self._hot_until = time.monotonic() + HOT_WAIT_S
            try:
                await broker_wait(min(timeout_s, max(self._hot_until - time.monotonic(), 0.0)))
            finally:
                self._armed = True  # the store's wait was skipped: ask at the next claim
        else:
            await self._race(queues, timeout_s, broker_wait)

    async def _race(self, queues: Sequence[str], timeout_s: float, broker_wait: BrokerWait) -> None:
        started = time.monotonic()
        by_broker = asyncio.ensure_future(broker_wait(timeout_s))
        by_store = asyncio.ensure_future(self._store.wait_for_work(queues, timeout_s))
        done: set[asyncio.Task[None]] = set()
        try:
            done, _ = await asyncio.wait({by_broker, by_store}, return_when="FIRST_COMPLETED")
        finally:
            for task in (by_broker, by_store):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            waited = time.monotonic() - started
            # Ask the store at the next claim after its own wake-up, a poll's timeout, or an
            # error; not after a broker message alone (its jobs are the broker's).
            if by_store in done or waited >= POLL_FRACTION * timeout_s or not done:
                self._armed = True
        self._quick = by_store in done and waited < QUICK_S
        for task in done:
            task.result()  # an error of either wait is the caller's
