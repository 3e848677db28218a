"""A concurrency limit that finds itself from observed latency.

Used by :class:`offload.asgi.AdmissionControl` when it is given an :class:`AdaptiveLimit`
instead of a fixed ``max_concurrency``. The algorithm is delay based, in the family of TCP
Vegas and Netflix's concurrency-limits, written from the idea rather than from their code.
"""

from __future__ import annotations

import math
from collections import deque

# A window shorter than this is mostly noise: one slow request would swing the mean.
_MIN_WINDOW = 10
# Every this many windows, one window runs at half the limit to re-measure the unloaded latency.
_PROBE_EVERY = 16
# The baseline is the lowest window mean among this many recent windows (four probes), so a
# permanent slowdown of the app becomes the new normal within that many windows.
_MEMORY = 4 * _PROBE_EVERY


class AdaptiveLimit:
    """A concurrency limit that adjusts itself so that the app is kept just busy.

    The limit watches the latency of requests it admitted, a window at a time (a window is
    ``max(limit, 10)`` completed requests). It keeps a *baseline*: the lowest mean latency among
    the last 64 windows, i.e. what a request costs when it does not queue inside the app. From a
    window's mean latency it estimates how many requests are queued inside the app rather than
    being served: ``queued = limit * (1 - baseline / mean)``.

    - ``queued`` above ``max(2, limit / 5)``: the app is past its knee; the limit falls by half
      of the excess (at least 1), so an overshoot is undone in a few windows.
    - ``queued`` below ``max(1, limit / 10)`` and the window was saturated (requests were
      waiting, or the limit was full): the limit rises by ``max(1, limit // 20)``.
    - otherwise it holds.

    Every 16th window is a *probe*: it runs at half the limit, so that the baseline is measured
    with the app's own queue drained even when the limit started far too high or the app got
    slower; the limit returns to its value after the probe. A probe costs about 3 % of
    throughput while it lasts.

    The limit therefore settles just past the point where latency starts to climb: with an app
    that serves ``N`` requests at once, at about ``N + max(1, N/10)`` to ``N + max(2, N/5)``,
    which costs admitted requests roughly 10-25 % of latency over the unloaded figure. It never
    rises while the app is under-used (no evidence that more is safe), and it stays within
    ``[min_limit, max_limit]``. Failed requests count like any other: their latency is what the
    app spent on them.

    One instance belongs to one middleware; it is not thread-safe (the middleware calls it from
    its event loop only).
    """

    def __init__(self, *, initial_limit: int = 10, min_limit: int = 1, max_limit: int = 1000):
        if min_limit < 1:
            raise ValueError(f"min_limit must be at least 1, got {min_limit}")
        if max_limit < min_limit:
            raise ValueError(f"max_limit ({max_limit}) must be >= min_limit ({min_limit})")
        if not min_limit <= initial_limit <= max_limit:
            raise ValueError(
                f"initial_limit ({initial_limit}) must be within [{min_limit}, {max_limit}]"
            )
        self.min_limit = min_limit
        self.max_limit = max_limit
        self._limit = initial_limit
        self._restore: int | None = None  # the limit to return to after a probe window
        self._means: deque[float] = deque(maxlen=_MEMORY)
        self._windows = 0
        self._count = 0
        self._sum_s = 0.0
        self._saturated = False

    @property
    def limit(self) -> int:
        """The current limit: how many requests may be inside the app at once."""
        return self._limit

    @property
    def baseline_s(self) -> float:
        """The estimated no-load latency in seconds (``inf`` before the first window)."""
        return min(self._means, default=math.inf)

    def on_sample(self, latency_s: float, *, saturated: bool) -> None:
        """Record one finished request that spent ``latency_s`` seconds in the app.

        ``saturated`` says whether the limit was binding when it finished (requests were waiting
        or every slot was taken); only saturated windows may raise the limit.
        """
        self._count += 1
        self._sum_s += latency_s
        self._saturated = self._saturated or saturated
        if self._count >= max(self._limit, _MIN_WINDOW):
            self._end_window()

    def _end_window(self) -> None:
        mean_s = self._sum_s / self._count
        saturated = self._saturated
        self._count, self._sum_s, self._saturated = 0, 0.0, False
        self._means.append(mean_s)
        self._windows += 1
        if self._restore is not None:  # a probe window: it only feeds the baseline
            self._limit, self._restore = self._restore, None
            return
        limit = self._limit
        queued = limit * (1.0 - self.baseline_s / mean_s) if mean_s > 0 else 0.0
        if queued > max(2.0, limit / 5):
            limit -= max(1, int((queued - max(2.0, limit / 5)) / 2))
        elif queued < max(1.0, limit / 10) and saturated:
            limit += max(1, limit // 20)
        self._limit = min(self.max_limit, max(self.min_limit, limit))
        if self._windows % _PROBE_EVERY == 0 and self._limit > self.min_limit:
            self._restore = self._limit
            self._limit = max(self.min_limit, self._limit // 2)
