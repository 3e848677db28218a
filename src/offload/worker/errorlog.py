"""Logs a failing backend operation at a bounded rate.

During an outage (a full disk, a database restart, a broker gone) every claim, heartbeat,
recovery pass and completion fails, several times a second, and each is retried. One log line
per failure would bury the log in identical lines and cost I/O when the disk is the problem.
So the first failure is logged at once, repeats at most once per ``every_s`` with a count, and
the first success after failures says how long the outage lasted. An operation that flaps
(fails, works, fails again: a disk with a few free pages) gets no more lines than that: a new
run of failures within ``every_s`` of the last line is reported only if it lasts until a line
is due again, and the runs that ended unreported are counted in the next line.
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
        self._failures = 0  # in the current run
        self._reported = False  # whether a line was logged about the current run
        self._logged_at = float("-inf")
        self._unreported = 0  # runs of failures that ended before a line was due

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        self._failures += 1
        due = now - self._logged_at >= self._every_s
        if self._since is None:
            self._since = now
            if due:  # else an operation that flaps would log two lines per flap
                self._line(
                    "%s failed: %s; retrying (logged at most every %.0fs while it fails%s)",
                    self._operation,
                    describe(exc),
                    self._every_s,
                    self._flaps(),
                )
        elif due:
            self._line(
                "%s still failing after %.0fs (%d failures%s): %s",
                self._operation,
                now - self._since,
                self._failures,
                self._flaps(),
                describe(exc),
            )

    def succeeded(self) -> None:
        if self._since is None:
            return
        if self._reported:
            self._line(
                "%s works again after %.1fs (%d failures)",
                self._operation,
                self._clock() - self._since,
                self._failures,
            )
        else:
            self._unreported += 1
        self._since = None
        self._failures = 0
        self._reported = False

    def _line(self, msg: str, *args: object) -> None:
        self._log.warning(msg, *args)
        self._logged_at = self._clock()
        self._reported = True

    def _flaps(self) -> str:
        n, self._unreported = self._unreported, 0
        return f"; {n} brief outages since the last report" if n else ""
