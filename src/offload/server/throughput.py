"""Jobs finished per second, per queue, from successive snapshots of the backend's counts.

The backend keeps counts, not rates, so the service compares the number of finished jobs
(succeeded + dead + cancelled) now with the number in its oldest snapshot inside the window.
This counts every worker of the backend, not only this process's. Retention deleting finished
jobs makes the difference shrink; a negative difference is shown as 0 rather than as nonsense.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

from offload.job import FINAL_STATES, JobState

WINDOW_S = 60.0


class Throughput:
    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S):
        self._clock = clock
        self._window_s = window_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def observe(self, counts: Mapping[str, Mapping[JobState, int]]) -> dict[str, float]:
        """Record a snapshot; return each queue's finished jobs per second over the window
        (queues first seen in this snapshot, or with no earlier snapshot, are left out)."""
        now = self._clock()
        finished = {
            q: sum(n for s, n in st.items() if s in FINAL_STATES) for q, st in counts.items()
        }
        while self._samples and now - self._samples[0][0] > self._window_s:
            self._samples.popleft()
        rates: dict[str, float] = {}
        if self._samples:
            then, before = self._samples[0]
            elapsed = now - then
            if elapsed > 0:
                for queue, n in finished.items():
                    if queue in before:
                        rates[queue] = round(max(0, n - before[queue]) / elapsed, 3)
        # Keep at most one snapshot per second: the window needs only its oldest point.
        if not self._samples or now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, finished))
        return rates
