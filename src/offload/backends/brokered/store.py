"""Starting a delivered job in the state store, through the Backend protocol only.

The broker hands this backend *specific* jobs (a message carries a job id); the store leases
exactly those through :attr:`ClaimRequest.job_ids`. The store's lease decides which delivery
wins when a message was delivered twice (a redelivery after a lost connection, a duplicate
publish): only one claim can lease a job while its lease holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from offload.backends.base import Backend
from offload.errors import BackendUnavailable
from offload.job import ClaimRequest, JobRecord, Lease
from offload.outcome import Outcome, Snoozed

log = logging.getLogger("offload.backends.brokered")

GETS_IN_FLIGHT = 16  # a store's connection pool is sized for a worker, not for 200 gets at once


async def claim_delivered(
    store: Backend, queue: str, job_ids: Sequence[str], worker_id: str, lease_s: float
) -> dict[str, JobRecord]:
    """Lease, in ``store``, those of ``job_ids`` that are due; return them by id.

    A job id delivered twice is started at most once. Jobs the store leased beyond those
    named (a store that ignores ``job_ids``) are handed straight back, attempt returned: left
    leased, nobody would run them until their lease expired, and they would die of it.
    """
    wanted = tuple(dict.fromkeys(job_ids))
    if not wanted:
        return {}
    req = ClaimRequest(
        queues=(queue,), limit=len(wanted), worker_id=worker_id, lease_s=lease_s, job_ids=wanted
    )
    got = await store.claim(req)
    named = set(wanted)
    stray: list[tuple[Lease, Outcome]] = [
        (j.lease, Snoozed(0.0)) for j in got if j.id not in named and j.lease is not None
    ]
    if stray:
        log.error(
            "the %s state store leased %d job(s) that were not named in ClaimRequest.job_ids; "
            "handing them back (this store cannot serve a broker efficiently)",
            type(store).__name__,
            len(stray),
        )
        try:
            await store.complete(stray)
        except BackendUnavailable:
            pass  # they stay leased until the lease runs out; the delivered ones are ours
    return {j.id: j for j in got if j.id in named}


async def get_many(store: Backend, job_ids: Sequence[str]) -> list[JobRecord | None]:
    """``store.get`` of each id, in order, at most GETS_IN_FLIGHT at a time (an unbounded
    gather of a few hundred ran a Redis store out of connections)."""
    gate = asyncio.Semaphore(GETS_IN_FLIGHT)

    async def one(job_id: str) -> JobRecord | None:
        async with gate:
            return await store.get(job_id)

    return list(await asyncio.gather(*(one(i) for i in job_ids)))
