"""Logs a failing backend operation at a bounded rate.

During an outage (a full disk, a database restart, a broker gone) every claim, heartbeat,
reaper pass and completion fails, several times a second, and each is retried. One log line
per failure would bury the log in identical lines and cost I/O when the disk is the problem.
So the first failure is logged at once, repeats at most once per ``every_s`` with a count, and
the first success after failures says how long the outage lasted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from offload.errors import describe

EVERY_S = 30.0  # a reminder twice a minute: an operator tailing the log sees it is ongoing


class FailureLog:
    """The log of one operation's failures (``operation`` names it: "claiming jobs")."""

    def __init__(
        self,
        logger: logging.Logger,
        operation: str,
        *,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._operation = operation
        self._every_s = every_s
        self._clock = clock
        self._since: float | None = None  # first failure of the current run of failures
        self._logged_at = 0.0
        self._failures = 0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        self._failures += 1
        if self._since is None:
            self._since = self._logged_at = now
            self._log.warning(
                "%s failed: %s; retrying (logged at most every %.0fs while it fails)",
                self._operation,
                describe(exc),
                self._every_s,
            )
        elif now - self._logged_at >= self._every_s:
            self._logged_at = now
            self._log.warning(
                "%s still failing after %.0fs (%d failures): %s",
                self._operation,
                now - self._since,
                self._failures,
                describe(exc),
            )

    def succeeded(self) -> None:
        if self._since is None:
            return
        self._log.warning(
            "%s works again after %.1fs (%d failures)",
            self._operation,
            self._clock() - self._since,
            self._failures,
        )
        self._since = None
        self._failures = 0
