"""The numbers of the overview and queues pages, read from the backend on each request.

Throughput is the service's one definition (``offload.server.throughput``). Latency is
measured from the store itself: for recently started jobs, ``started_at - run_at`` (how long a
due job waited for a free slot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from offload.backends.base import Backend
from offload.job import JobFilter, JobRecord, JobState, WorkerInfo

LATENCY_WINDOW_S = 300.0  # latency of jobs created in the last five minutes
LATENCY_SAMPLE = 200  # at most this many jobs per state feed the percentiles
_OLDEST_STEPS = 80  # bound on the look-ups that find a queue's oldest waiting job
_OLDEST_RESOLUTION_S = 0.001


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


async def latency(backend: Backend, now: float) -> tuple[float | None, float | None, int]:
    """p50 and p95 of enqueue-to-start waits of recently started jobs, and the sample size."""
    waits: list[float] = []
    for state in (JobState.RUNNING, JobState.SUCCEEDED, JobState.DEAD):
        page = await backend.list_jobs(
            JobFilter(state=state, created_after=now - LATENCY_WINDOW_S, limit=LATENCY_SAMPLE)
        )
        waits.extend(
            max(0.0, j.started_at - j.run_at) for j in page.jobs if j.started_at is not None
        )
    return percentile(waits, 50), percentile(waits, 95), len(waits)


async def oldest_waiting(backend: Backend, queue: str) -> JobRecord | None:
    """The queued job of ``queue`` created first, in a bounded number of one-row reads.

    The backend lists newest first, so this gallops back in time from the newest queued job
    until nothing is older, then bisects the last step. Past the bound (a very old backlog
    with very close timestamps) it answers the oldest job found so far.
    """

    async def older_than(t: float | None) -> JobRecord | None:
        flt = JobFilter(state=JobState.QUEUED, queue=queue, created_before=t, limit=1)
        page = await backend.list_jobs(flt)
        return page.jobs[0] if page.jobs else None

    best = await older_than(None)
    if best is None:
        return None
    step, low = 60.0, None  # invariant once set: no queued job was created before ``low``
    for _ in range(_OLDEST_STEPS):
        if low is None:  # gallop: is anything older than best - step?
            found = await older_than(best.created_at - step)
            if found is None:
                low = best.created_at - step
            else:
                best, step = found, step * 4
        elif best.created_at - low > _OLDEST_RESOLUTION_S:  # bisect [low, best.created_at]
            mid = (low + best.created_at) / 2
            found = await older_than(mid)
            if found is None:
                low = mid
            else:
                best = found
        else:  # the window is tiny: is best the oldest, or is there one just before it?
            found = await older_than(best.created_at)
            if found is None:
                return best
            best = found
    return best


@dataclass(frozen=True)
class Slots:
    workers: int
    busy: int
    idle: int


def slots(workers: Sequence[WorkerInfo]) -> Slots:
    busy = sum(max(0, w.busy) for w in workers)
    total = sum(max(0, w.concurrency) for w in workers)
    return Slots(workers=len(workers), busy=busy, idle=max(0, total - busy))
