"""The memory backend's limits: the shared :class:`Gate` over the store's own records.

The caller holds the store's lock. Concurrency is counted from running jobs (so a slot is
free again as soon as its job leaves ``running``: completed, cancelled, or put back by
``recover`` when its lease expired); rates from the claim times kept per bucket.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from offload.backends.limits import INF, Gate, parse_bucket, usage, window_start
from offload.backends.memory.store import MemoryStore
from offload.job import ACTIVE_STATES, WAITING_STATES, JobState, LimitUsage


def memory_gate(st: MemoryStore, now: float) -> Gate:
    counts: dict[str, int] | None = None

    def running(bucket: str) -> int:
        nonlocal counts
        if counts is None:  # one pass over the running jobs, only if a limited job is seen
            counts = {}
            for j in st.jobs.values():
                if j.state is JobState.RUNNING:
                    for b in j.limits:
                        counts[b] = counts.get(b, 0) + 1
        return counts.get(bucket, 0)

    def recent(bucket: str, at: float) -> Sequence[float]:
        start = window_start(bucket, at)
        times = [t for t in st.rate_log.get(bucket, ()) if t > start]
        st.rate_log[bucket] = times  # forget claims that left the window
        return times

    return Gate(now=now, running=running, recent=recent)


def log_rates(st: MemoryStore, buckets: Sequence[str], now: float) -> None:
    for b in buckets:
        if parse_bucket(b).is_rate:
            st.rate_log.setdefault(b, []).append(now)


def next_claimable(st: MemoryStore, queues: Collection[str], now: float) -> float | None:
    """When a waiting job of ``queues`` may next be claimed: its run_at, or later when a limit
    holds it (a rate's next window; never, for a full concurrency bucket, until a completion
    wakes the waiters). None: no waiting job."""
    gate = memory_gate(st, now)
    best: float | None = None
    for j in st.jobs.values():
        if j.queue not in queues or j.state not in WAITING_STATES:
            continue
        at = j.run_at
        if j.limits and j.run_at <= now:
            at = gate.hold(j.limits) or at
        if at != INF and (best is None or at < best):
            best = at
    return best


def memory_usage(st: MemoryStore) -> list[LimitUsage]:
    """``Backend.limit_usage`` over the store's active jobs."""
    return usage(
        (j.queue, j.state is JobState.RUNNING, j.limits)
        for j in st.jobs.values()
        if j.limits and j.state in ACTIVE_STATES
    )
