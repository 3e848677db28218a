"""Starting a delivered job in the state store, through the Backend protocol only.

The broker hands this backend *specific* jobs (a message carries a job id), but the protocol's
:meth:`Backend.claim` leases *any* due jobs of a queue in the store's order. Until the protocol
can claim given ids (a ``job_ids`` filter on :class:`ClaimRequest`), this module reconciles the
two: it claims as many jobs as it was delivered from the same queue, keeps those it was
delivered, and gives the others straight back (``Snoozed(0)``: the attempt is returned). With
one consumer per queue the store's order and the broker's agree and nothing is given back;
with several, some claims are given back and retried. A delivery whose job is not started
stays parked with its backend and is offered again at the next claim.
"""

from __future__ import annotations

from collections.abc import Sequence

from offload.backends.base import Backend
from offload.job import ClaimRequest, JobRecord
from offload.outcome import Snoozed

_CLAIM_BY_ID = "job_ids" in ClaimRequest.__struct_fields__


async def claim_delivered(
    store: Backend, queue: str, job_ids: Sequence[str], worker_id: str, lease_s: float
) -> dict[str, JobRecord]:
    """Lease, in ``store``, those of ``job_ids`` that are due; return them by id.

    A job id delivered twice is started at most once.
    """
    wanted = set(job_ids)
    if not wanted:
        return {}
    if _CLAIM_BY_ID:
        req = ClaimRequest(
            queues=(queue,),
            limit=len(wanted),
            worker_id=worker_id,
            lease_s=lease_s,
            job_ids=tuple(wanted),  # type: ignore[call-arg]
        )
        return {j.id: j for j in await store.claim(req)}
    req = ClaimRequest(queues=(queue,), limit=len(wanted), worker_id=worker_id, lease_s=lease_s)
    claimed = await store.claim(req)
    keep = {j.id: j for j in claimed if j.id in wanted}
    back = [(j.lease, Snoozed(0.0)) for j in claimed if j.id not in wanted and j.lease]
    if back:
        await store.complete(back)
    return keep
