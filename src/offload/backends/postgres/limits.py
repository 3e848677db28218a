"""The PostgreSQL backend's limits at claim: the gated claim and its bookkeeping.

Jobs with limits are never taken by the ordinary claim statement (it filters ``limits IS
NULL`` and reports whether limited jobs are due); ``claim_gated`` takes them through the
``gate_claim`` function of migration 0005, which holds one advisory transaction lock per schema
while it counts and picks, so two claimers never both see the same free slot. See
docs/limits.md for the choices.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from offload.backends.postgres import queries as q
from offload.job import ClaimRequest, JobRecord, Lease

Rows = Callable[[str, Mapping[str, Any]], Awaitable[list[tuple[Any, ...]]]]


class PgLimits:
    """What one backend instance keeps for limits: the limited jobs it claimed, by id, with
    their queue (their completion frees a slot: the queue is notified, in every process)."""

    def __init__(self, rows: Rows, lock_ns: int, channel: str) -> None:
        self._rows = rows
        self._ns = lock_ns
        self._channel = channel
        self._claimed: dict[str, str] = {}
        # Queue sets whose last claim met jobs with limits: their claims go to the gate
        # directly (it takes jobs without limits too), saving the ordinary statement.
        self.gated: set[frozenset[str]] = set()

    async def claim(
        self, req: ClaimRequest, limit: int
    ) -> tuple[list[JobRecord], float | None, float | None]:
        """At most ``limit`` jobs by the gate, in how many seconds held jobs may go (None:
        none held, ``inf``: at a completion), and the next scheduled job's distance."""
        params = {
            "queues": list(req.queues),
            "ids": None,
            "limit": limit,
            "ns": self._ns,
            "worker_id": req.worker_id,
            "lease_s": float(req.lease_s),
            "limited_only": req.limited_only,
        }
        rows = await self._rows("claim_gated", params)
        held, limited, next_in = rows[0][q.N_COLUMNS : q.N_COLUMNS + 3] if rows else (None,) * 3
        key = frozenset(req.queues)
        if limited:
            self.gated.add(key)
        else:
            self.gated.discard(key)
        records = q.claimed_records([row for row in rows if row[0] is not None])
        self._claimed.update((r.id, r.queue) for r in records if r.limits)
        return records, (None if held is None else float(held)), next_in

    async def finished(self, leases: Sequence[Lease]) -> None:
        """After a completion: notify the queues of the limited jobs among ``leases``."""
        if not self._claimed:
            return
        queues = {self._claimed.pop(le.job_id, None) for le in leases} - {None}
        if queues:
            await self._rows("notify_queues", {"channel": self._channel, "queues": sorted(queues)})


def next_at(next_in: float | None, held_in: float | None, loop_now: float) -> float | None:
    """The loop time the caller's waiter sleeps to: the next scheduled job, or a rate window
    that lets a held job go, whichever is first (None: neither)."""
    times = []
    if next_in is not None:
        times.append(loop_now + float(next_in))
    if held_in is not None and not math.isinf(held_in):
        times.append(loop_now + max(held_in, 0.0))
    return min(times) if times else None
