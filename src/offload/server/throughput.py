"""Throughput: jobs *processed* per second, per queue, the one definition behind the API's
``finished_per_s`` and the dashboard's rates and chart.

A job is processed when a worker brought it to an end: it succeeded, or it failed for good
(``dead``). A cancelled job was not processed (nobody ran it to an end), so it does not count,
as in Sidekiq's "processed" and Celery's task-succeeded/failed events.

The backend keeps counts, not rates, so throughput comes from successive snapshots of
``Backend.counts()``: it counts every worker of the backend, in any process. Snapshots are kept
in memory (one per second at most, for :data:`HISTORY_S`), so the numbers start when the service
is first asked. A queue absent from a snapshot had no jobs then (counts from 0). Retention
deleting finished jobs makes a count go down: that shows as 0, never as a negative rate.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping

import msgspec

from offload.job import JobState

PROCESSED = (JobState.SUCCEEDED, JobState.DEAD)
WINDOW_S = 60.0  # a queue's rate is averaged over the last minute
HISTORY_S = 600.0  # ten minutes of samples for the dashboard's chart
_SAMPLE_EVERY_S = 1.0  # the window needs only its oldest point; the chart, one per second


class Sample(msgspec.Struct, frozen=True):
    at: float
    succeeded: dict[str, int]
    dead: dict[str, int]

    def processed(self, queue: str) -> int:
        return self.succeeded.get(queue, 0) + self.dead.get(queue, 0)


class Throughput:
    """Snapshots of one service's counts; ``clock`` (seconds) can be replaced in tests."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        window_s: float = WINDOW_S,
        history_s: float = HISTORY_S,
    ) -> None:
        self.clock = clock
        self.window_s = window_s
        self.history_s = history_s
        self._samples: deque[Sample] = deque()
        self._latest: Sample | None = None

    def observe(self, counts: Mapping[str, Mapping[JobState, int]]) -> None:
        """Record the backend's counts now."""
        now = self.clock()
        sample = Sample(
            at=now,
            succeeded={q: st.get(JobState.SUCCEEDED, 0) for q, st in counts.items()},
            dead={q: st.get(JobState.DEAD, 0) for q, st in counts.items()},
        )
        if self._samples and now < self._samples[-1].at:  # the clock stepped back
            self._samples.clear()
        self._latest = sample
        if not self._samples or now - self._samples[-1].at >= _SAMPLE_EVERY_S:
            self._samples.append(sample)
        while now - self._samples[0].at > self.history_s:
            self._samples.popleft()

    def rates(self) -> dict[str, float]:
        """Each queue's processed jobs per second, from the oldest sample inside the window to
        the latest observation; empty until two observations at different times."""
        latest = self._latest
        first = next(
            (s for s in self._samples if latest and latest.at - s.at <= self.window_s), None
        )
        if latest is None or first is None or latest.at <= first.at:
            return {}
        elapsed = latest.at - first.at
        return {
            q: round(max(0, latest.processed(q) - first.processed(q)) / elapsed, 3)
            for q in latest.succeeded
        }

    def series(self) -> list[tuple[float, float, float]]:
        """``(time, succeeded per second, dead per second)`` between consecutive samples, all
        queues together: the dashboard's chart."""
        out = []
        for before, after in itertools.pairwise(self._samples):
            dt = after.at - before.at
            ok = sum(max(0, n - before.succeeded.get(q, 0)) for q, n in after.succeeded.items())
            bad = sum(max(0, n - before.dead.get(q, 0)) for q, n in after.dead.items())
            out.append((round(after.at, 3), round(ok / dt, 3), round(bad / dt, 3)))
        return out
