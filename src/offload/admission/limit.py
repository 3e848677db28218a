"""A concurrency limit that finds itself from observed latency.

Used by :class:`offload.admission.AdmissionControl` when it is given an :class:`AdaptiveLimit`
instead of a fixed ``max_concurrency``. Delay based, in the family of TCP Vegas and Netflix's
concurrency-limits (Vegas, Gradient2), written from the ideas rather than from their code. Those
limits keep a few requests queued inside the app on purpose, for throughput; this one aims just
below the point where latency starts to climb, because the latency of admitted requests is what
admission control protects.
"""

from __future__ import annotations

import math
from collections import deque

# A window shorter than this is mostly noise: one slow request would swing the mean.
_MIN_WINDOW = 16
# Window means whose minimum is the baseline (with the last probes' means, however old: when
# every recent window ran a little past the knee, within the tolerance, their minimum alone
# would become the new normal and let the limit creep up).
_MEMORY = 64
# The baseline takes the window at this fraction (1/10) from the fastest, not the fastest: on
# a busy machine the fastest window is a lucky one, far below what a request usually costs.
_LOW_SHARE = 10
_PROBES_KEPT = 2
# Windows kept for the current limit, to compare a probe with.
_LEVEL_MEMORY = 4
# Clean windows to wait before trying again a level that made latency climb: the first time,
# and at most (each failed trial doubles the wait). A trial past the knee lasts about one
# window, so at a stable knee trials take well under 1 % of requests.
_HOLD_FIRST = 4
_HOLD_MAX = 256
_HOLDS_KEPT = 8
# Clean windows a trial must pass: one lucky window in a noisy spell is not evidence.
_TRIAL_WINDOWS = 2
# Normal windows between two probes at half the limit: after a probe that found the limit past
# the knee, and at most (each probe that finds nothing doubles the interval).
_PROBE_FIRST = 4
_PROBE_MAX = 128


class AdaptiveLimit:
    """A concurrency limit that keeps the app just below the point where its latency climbs.

    It watches the time admitted requests spend in the app (from admission to the end of the
    response; not their wait for admission), a window at a time: a window is ``max(limit, 16)``
    finished requests, leaving out those admitted before the limit last changed, so that each
    window measures one limit. The *baseline* is what a request costs when nothing queues
    inside the app: the window mean a tenth of the way up from the fastest of the last 64
    windows (the fastest itself would be a lucky one on a busy machine), or the last two
    probes' (below) if lower. A window more than ``tolerance`` (default 10 %) slower than the
    baseline is *climbing*.

    - **Rise by trial.** Only a clean window in which the limit was binding (requests waiting,
      or every slot taken) may raise the limit: an app that is not kept busy gives no evidence
      that more is safe. Each raise is a trial: the next two windows must be clean, or the
      limit goes straight back and that level is *held*: it is tried again after 4 clean
      windows, and each failed trial doubles that, up to 256. At a stable knee, trials past it
      thus take a fraction of a percent of requests. With no held level above, the limit
      grows by half (it starts low, at 4 by default, and finds a large app in a few trials,
      without overshooting a small knee by much); below one, it goes halfway to it. A
      successful trial forgets the holds at or below it.
    - **Probe below.** Now and then one window runs at half the limit and is compared with the
      windows at the full limit on both sides of it (the fastest of them, so that a busy spell
      around the probe does not count). If those are slower than the probe by more than the
      *margin*, the limit was past the knee (it started too high, or the app lost capacity):
      it falls at once by the gradient, to ``limit * probe mean / full-limit mean`` (what the
      app really serves at once), by at least 1 and at most half, and the next probe comes 4
      windows later. A probe that finds nothing doubles the interval, up to 128 windows. Two
      windows in a row more than twice the margin over the baseline bring the next probe
      forward. The first probe comes after two windows, before any rise, so that an initial
      limit past the knee is corrected first. The margin is the tolerance, or twice the usual
      difference between consecutive windows at one limit when that is larger: on a busy
      machine, only a clear difference counts.

    Backing off thus needs a side-by-side comparison of two limits, never one slow window
    against an old figure. An app (or a machine) that got slower at every load keeps its limit,
    instead of being starved down to ``min_limit`` by a limit that takes slowness for
    queueing; it rises again once the slower figure is the baseline (after 64 windows and two
    probes). When latency is too noisy to show the knee, trials fail and probes find nothing,
    so the limit stays where it is: it never goes past the knee without evidence.

    Where it settles: with an app that serves ``N`` requests at once, where one more request
    adds ``1/N`` to latency, above the tolerance (``N`` below 10 by default), at ``N``: past
    the knee only during the rare trials, at half during the rare probes. With a larger knee,
    or latency that grows smoothly with load, where latency is at most ``tolerance`` over the
    unloaded figure; a smaller ``tolerance`` suits an app whose latency is steady enough to
    show a smaller step. It stays within ``[min_limit, max_limit]``. Failed requests count
    like any other: their latency is what the app spent on them.

    One instance belongs to one middleware; it is not thread-safe (the middleware calls it from
    its event loop only).
    """

    def __init__(
        self,
        *,
        initial_limit: int = 4,
        min_limit: int = 1,
        max_limit: int = 1000,
        tolerance: float = 0.1,
    ) -> None:
        if min_limit < 1:
            raise ValueError(f"min_limit must be at least 1, got {min_limit}")
        if max_limit < min_limit:
            raise ValueError(f"max_limit ({max_limit}) must be >= min_limit ({min_limit})")
        if not min_limit <= initial_limit <= max_limit:
            raise ValueError(
                f"initial_limit ({initial_limit}) must be within [{min_limit}, {max_limit}]"
            )
        if not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be within (0, 1), got {tolerance}")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.tolerance = tolerance
        self._limit = initial_limit
        self._means: deque[float] = deque(maxlen=_MEMORY)
        # The last probes' means: they keep the baseline honest when every recent window ran at
        # a limit a little past the knee (within the tolerance), which would otherwise become
        # the new normal and let the limit creep up.
        self._probes: deque[float] = deque(maxlen=_PROBES_KEPT)
        self._level: deque[float] = deque(maxlen=_LEVEL_MEMORY)  # windows at this limit
        self._saved_level: list[float] = []  # the level's windows, kept across a trial or probe
        # Levels that made latency climb -> clean windows to wait before trying them again.
        self._holds: dict[int, int] = {}
        self._streak = 0  # clean, binding windows in a row just under the next held level
        self._jumps = 0  # windows in a row far over the baseline
        # Moving mean of |ln(ratio)| of consecutive windows at one limit: how noisy they are.
        self._noise = 0.0
        self._trial_from: int | None = None  # during a trial above: the limit it came from
        self._trial_left = 0  # clean windows the trial still needs to pass
        self._probe_from: int | None = None  # during a probe below: the limit it came from
        self._probe_mean = math.inf  # after a probe below, until the window after it: its mean
        self._since_probe = 0
        # The first probe comes as soon as two windows give it a reference, and the limit does
        # not rise before it: an initial limit past the knee is found before it grows further.
        self._probe_every = 2
        self._probed = False
        self._skip = 0  # samples still to ignore: requests admitted under the previous limit
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
        if not self._means:
            return min(self._probes, default=math.inf)
        low = sorted(self._means)[len(self._means) // _LOW_SHARE]
        return min(low, min(self._probes, default=math.inf))

    def on_sample(self, latency_s: float, *, saturated: bool) -> None:
        """Record one finished request that spent ``latency_s`` seconds in the app.

        ``saturated`` says whether the limit was binding when it finished (requests were waiting
        or every slot was taken); only saturated windows may raise the limit.
        """
        if self._skip:
            self._skip -= 1
            return
        self._count += 1
        self._sum_s += latency_s
        if saturated:
            self._saturated = True
        if self._count >= _MIN_WINDOW and self._count >= self._limit:
            self._end_window()

    def _end_window(self) -> None:
        mean = self._sum_s / self._count
        saturated = self._saturated
        self._count, self._sum_s, self._saturated = 0, 0.0, False
        self._means.append(mean)
        if self._probe_from is not None:  # the probe window: back to the limit for one more
            self._probe_mean = mean
            self._probes.append(mean)
            self._set(self._probe_from)
            self._probe_from = None
            return
        if self._probe_mean < math.inf:
            self._end_probe(mean)
            return
        baseline = self.baseline_s
        climbing = mean > baseline * (1 + self.tolerance)
        if self._trial_from is not None:
            if climbing:
                self._end_trial(failed=True)
                return
            self._trial_left -= 1
            self._level.append(mean)
            if self._trial_left:
                return
            self._end_trial(failed=False)
        else:
            if self._level:
                self._noise += (abs(math.log(mean / self._level[-1])) - self._noise) / 8
            self._level.append(mean)
        margin = self._margin()
        self._jumps = self._jumps + 1 if mean > baseline * (1 + 2 * margin) else 0
        self._since_probe += 1
        if len(self._level) >= 2 and (
            self._since_probe >= self._probe_every
            or (self._jumps >= 2 and self._since_probe >= self._probe_every // 4)
        ):
            self._start_probe()
        elif saturated and not climbing and self._probed:
            self._rise()

    def _rise(self) -> None:
        limit = self._limit
        held = min(self._holds, default=None)
        if held is None:  # no level known to climb above: half as many again, to find a
            new = limit + max(1, limit // 2)  # large app fast but pass a small knee by little
        elif limit + 1 < held:  # halfway to the lowest level known to climb
            new = limit + (held - limit) // 2
        else:
            self._streak += 1
            if self._streak < self._holds[held]:
                return
            new = held
        new = min(new, self.max_limit)
        if new > limit:
            self._saved_level = list(self._level)
            self._streak = 0
            self._set(new)
            self._trial_from = limit
            self._trial_left = _TRIAL_WINDOWS

    def _end_trial(self, *, failed: bool) -> None:
        level, back = self._limit, self._trial_from or self._limit
        self._trial_from = None
        if not failed:
            for held in [held for held in self._holds if held <= level]:
                del self._holds[held]
            return
        self._hold(level)
        self._streak = 0
        self._set(back)
        self._level.extend(self._saved_level)

    def _start_probe(self) -> None:
        self._probed = True
        self._since_probe = 0
        self._jumps = 0
        probe = max(self.min_limit, self._limit // 2)
        if probe < self._limit:
            self._saved_level = list(self._level)
            self._probe_from = self._limit
            self._set(probe)

    def _end_probe(self, mean: float) -> None:
        """The window after the probe ran at the full limit again: compare the probe with the
        fastest of the windows on both sides of it, so that a busy spell around the probe is
        not mistaken for the app serving fewer requests faster."""
        level, probe_mean = self._limit, self._probe_mean
        self._probe_mean = math.inf
        reference = min([mean, *self._saved_level])
        margin = self._margin()
        if reference > probe_mean * (1 + margin):
            # Half the requests inside are served faster: the limit was past the knee. Cut by
            # the gradient now, and probe again soon in case it is still past.
            self._probe_every = _PROBE_FIRST
            self._hold(level)
            self._streak = 0
            ratio = probe_mean / reference
            self._set(max(self.min_limit, level // 2, min(level - 1, round(level * ratio))))
            return
        if probe_mean <= reference * (1 + margin):
            self._probe_every = min(_PROBE_MAX, 2 * self._probe_every)
        # else: fewer requests inside were slower, which only noise does; probe again as soon.
        self._level.extend(self._saved_level)
        self._level.append(mean)

    def _margin(self) -> float:
        """How much faster a probe must be to count: the tolerance, or more when windows at
        one limit differ by more than that (a busy machine), so that noise alone cannot cut."""
        return max(self.tolerance, 2 * self._noise)

    def _hold(self, level: int) -> None:
        """Remember that ``level`` made latency climb: wait longer before trying it again."""
        hold = self._holds.get(level)
        self._holds[level] = min(_HOLD_MAX, 2 * hold) if hold else _HOLD_FIRST
        if len(self._holds) > _HOLDS_KEPT:
            del self._holds[max(self._holds)]

    def _set(self, new: int) -> None:
        if new != self._limit:
            # The requests admitted under the old limit (at most that many) are still inside;
            # their latency belongs to the old limit, so the next window leaves them out.
            self._skip = self._limit
            self._limit = new
            self._level.clear()
        self._jumps = 0
