"""Starting a delivered job in the state store, through the Backend protocol only.

The broker hands this backend *specific* jobs (a message carries a job id); the store leases
exactly those through :attr:`ClaimRequest.job_ids`. The store's lease decides which delivery
wins when a message was delivered twice (a redelivery after a lost connection, a duplicate
publish): only one claim can lease a job while its lease holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from offload.backends.base import Backend
from offload.job import ClaimRequest, JobRecord


async def claim_delivered(
    store: Backend, queue: str, job_ids: Sequence[str], worker_id: str, lease_s: float
) -> dict[str, JobRecord]:
    """Lease, in ``store``, those of ``job_ids`` that are due; return them by id.

    A job id delivered twice is started at most once.
    """
    wanted = tuple(dict.fromkeys(job_ids))
    if not wanted:
        return {}
    req = ClaimRequest(
        queues=(queue,), limit=len(wanted), worker_id=worker_id, lease_s=lease_s, job_ids=wanted
    )
    return {j.id: j for j in await store.claim(req) if j.id in wanted}
