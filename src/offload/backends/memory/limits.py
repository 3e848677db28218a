"""The memory backend's limits: the shared :class:`Gate` over the store's own records.

The caller holds the store's lock. Concurrency is counted from running jobs (so a slot is
free again as soon as its job leaves ``running``: completed, cancelled, or put back by
``recover`` when its lease expired); rates from the claim times kept per bucket.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from offload.backends.fairness import UNKEYED, Candidate, Lane, new_turns, pick
from offload.backends.limits import (
    INF,
    Gate,
    buckets_only,
    fair_key_of,
    parse_bucket,
    usage,
    window_start,
)
from offload.backends.memory.store import MemoryStore
from offload.job import ACTIVE_STATES, WAITING_STATES, JobRecord, JobState, LimitUsage


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


def fair_pick(st: MemoryStore, due: Sequence[JobRecord], limit: int, now: float) -> list[JobRecord]:
    """The due jobs (in claim order) a fair claim of ``limit`` takes, in fair order
    (offload.backends.fairness); stamps the served lanes' turns. The caller gates them
    again (same store, same lock: the same decisions)."""
    lanes: dict[tuple[str, str], Lane] = {}
    for j in due:
        key = fair_key_of(j.limits) or UNKEYED
        lane = lanes.get((j.queue, key))
        if lane is None:
            turn = st.turns.get((j.queue, key), 0)
            lane = lanes[(j.queue, key)] = Lane(j.queue, key, turn, [])
        lane.rows.append(Candidate(j, j.priority, j.run_at, st.seq[j.id], j.limits))
    chosen, _ = pick(list(lanes.values()), limit, memory_gate(st, now))
    after = max(st.turns.values(), default=0)
    st.turns.update(new_turns(chosen, after))
    served: dict[tuple[str, str], int] = {}
    for _, lane in chosen:
        served[(lane.queue, lane.key)] = served.get((lane.queue, lane.key), 0) + 1
    for k, n in served.items():
        if n == len(lanes[k].rows):  # its lane is empty now: forget its turn
            del st.turns[k]
    return [c.ref for c, _ in chosen]


def log_rates(st: MemoryStore, buckets: Sequence[str], now: float) -> None:
    for b in buckets_only(buckets):
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
