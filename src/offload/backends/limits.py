"""Limits at claim, for engines that decide in Python (memory, SQLite's writer thread).

A job carries its limits as *buckets*, stamped at enqueue from its task's and queue's
declarations (see :mod:`offload.limits`): ``"<cap>/<period_ms>/<scope>"``. A period of 0 is a
concurrency bucket (at most ``cap`` running jobs hold it); otherwise a rate bucket (at most
``cap`` claims in any window of ``period_ms``). Stamping them on the job keeps the claim
self-contained: every worker, whatever tasks it knows, enforces the same numbers, and an engine
needs no registry of declarations. The Lua and SQL engines read the same strings.

:class:`Gate` is the decision of one claim: walking candidates in claim order, it takes a job
only if every bucket of it has room, counting the jobs it has already taken in this claim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from offload.job import LimitUsage

INF = float("inf")
# A job with a fair key (``@app.task(fair_key="tenant_id")``) carries it as the FIRST entry of
# its limits, ``fair:tenant_id="acme"``: a claim-time rule like the buckets, so it travels and
# is stored the same way, and puts the job on the claim path that knows limits (see
# offload.backends.fairness). It is not a bucket: the gate and the usage counts skip it.
FAIR_PREFIX = "fair:"


def fair_key_of(limits: Sequence[str]) -> str | None:
    """The fair key a job's limits carry (their first entry), or None."""
    if limits and limits[0].startswith(FAIR_PREFIX):
        return limits[0]
    return None


def buckets_only(limits: Sequence[str]) -> Sequence[str]:
    """A job's limits without its fair key: the buckets the gate counts."""
    return limits[1:] if fair_key_of(limits) is not None else limits


@dataclass(frozen=True)
class Bucket:
    cap: int
    period_s: float  # 0: concurrency
    scope: str

    @property
    def is_rate(self) -> bool:
        return self.period_s > 0


def bucket_text(cap: int, period_s: float, scope: str) -> str:
    return f"{cap}/{round(period_s * 1000)}/{scope}"


def parse_bucket(text: str) -> Bucket:
    """The bucket a job carries. Malformed text (untrusted storage) is a ValueError."""
    cap, period_ms, scope = text.split("/", 2)
    bucket = Bucket(int(cap), int(period_ms) / 1000, scope)
    if bucket.cap < 1 or bucket.period_s < 0:
        raise ValueError(f"bad limit bucket {text!r}")
    return bucket


@dataclass
class Gate:
    """One claim's decision.

    ``running(bucket)`` is how many running jobs hold a concurrency bucket; ``recent(bucket,
    now)`` the claim times within a rate bucket's window (any order). Each is asked once per
    bucket per claim. ``held_until`` is, after the walk, the earliest time a rate-held job may
    go (``INF`` when only concurrency holds it: a completion frees it, which notifies).
    """

    now: float
    running: Callable[[str], int]
    recent: Callable[[str, float], Sequence[float]]
    used: dict[str, int] = field(default_factory=dict)
    parsed: dict[str, Bucket] = field(default_factory=dict)
    free_at: dict[str, float] = field(default_factory=dict)
    held: int = 0
    held_until: float = INF

    def admit(self, buckets: Sequence[str]) -> bool:
        """Take a job carrying ``buckets`` if each has room; count it in each if so."""
        buckets = buckets_only(buckets)
        until = self.hold(buckets)
        if until is not None:
            self.held += 1
            self.held_until = min(self.held_until, until)
            return False
        for text in buckets:
            self.used[text] += 1
        return True

    def hold(self, buckets: Sequence[str]) -> float | None:
        """None if a job carrying ``buckets`` may go now, else when it may (INF: a completion
        frees it). Counts nothing."""
        for text in buckets_only(buckets):
            if self._room(text) <= 0:
                return self.free_at.get(text, INF)
        return None

    def _room(self, text: str) -> int:
        used = self.used.get(text)
        bucket = self.parsed.get(text)
        if bucket is None:
            bucket = self.parsed[text] = parse_bucket(text)
        if used is None:
            if bucket.is_rate:
                times = sorted(self.recent(text, self.now))
                used = len(times)
                # Once full (now, or by this claim's own takes), a slot frees when the oldest
                # of the window's last `cap` claims leaves it.
                first = max(used - bucket.cap, 0)
                oldest = times[first] if times else self.now
                self.free_at[text] = oldest + bucket.period_s
            else:
                used = self.running(text)
            self.used[text] = used
        return bucket.cap - used


def window_start(text: str, now: float) -> float:
    """Claims at or before this time no longer count in a rate bucket's window."""
    return now - parse_bucket(text).period_s


def usage(jobs: Iterable[tuple[str, bool, Sequence[str]]]) -> list[LimitUsage]:
    """``Backend.limit_usage`` from (queue, running?, buckets) of each active limited job."""
    counts: dict[tuple[str, str], list[int]] = {}
    for queue, running, buckets in jobs:
        for b in buckets_only(buckets):
            c = counts.setdefault((queue, b), [0, 0])
            c[0 if running else 1] += 1
    return [
        LimitUsage(queue=q, limit=b, running=r, waiting=w)
        for (q, b), (r, w) in sorted(counts.items())
    ]
