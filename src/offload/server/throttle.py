"""Slowing down token guessing: after too many failed logins or bad bearer tokens from one
client, every attempt of that client is refused (429 with Retry-After) for a while.

Tokens are long and random, so guessing one is hopeless anyway; the throttle keeps a guesser
from costing CPU and filling the log, and makes a leaked-but-revoked token's retries visible.
Clients are told apart by their address (the ASGI ``client``): behind a proxy, make the server
see the real address (uvicorn's ``--proxy-headers``) or every client shares one budget.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

DEFAULT_MAX_FAILURES = 20
DEFAULT_WINDOW_S = 60.0
MAX_CLIENTS = 10_000  # clients remembered at once; the least recently failing are forgotten


class Throttle:
    """Failures per client within a sliding window; shared by the API and the dashboard."""

    def __init__(
        self,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        times = self._failures.get(client)
        if times is None:
            return None
        now = self._clock()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        if len(times) < self.max_failures:
            return None
        return times[0] + self.window_s - now

    def failed(self, client: str) -> None:
        """Count one failed attempt of ``client``."""
        times = self._failures.pop(client, None) or deque(maxlen=self.max_failures)
        times.append(self._clock())
        self._failures[client] = times  # most recent last
        while len(self._failures) > MAX_CLIENTS:
            self._failures.popitem(last=False)
