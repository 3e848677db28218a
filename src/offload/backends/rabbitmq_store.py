"""Starting a delivered job in the state store, through the Backend protocol only.

The broker hands this backend *specific* jobs (a message carries a job id); the store leases
exactly those through :attr:`ClaimRequest.job_ids`. The store's lease decides which delivery
wins when a message was delivered twice (a redelivery after a lost connection, a duplicate
publish): only one claim can lease a job while its lease holds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from offload.backends.base import Backend
from offload.job import ClaimRequest, JobRecord, Lease
from offload.outcome import Outcome, Snoozed

log = logging.getLogger("offload.backends.rabbitmq")


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
            "handing them back (this store cannot serve amqp:// efficiently)",
            type(store).__name__,
            len(stray),
        )
        await store.complete(stray)
    return {j.id: j for j in got if j.id in named}
