"""Backoff policies: how long to wait before the next attempt of a failed job."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class Backoff(Protocol):
    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ...


@dataclass(frozen=True)
class ExponentialBackoff:
    """``base_s * factor ** (attempt - 1)``, capped at ``max_s``, spread by ±``jitter``.

    Jitter keeps a burst of jobs that failed together (say, a database blip) from retrying in
    lock step. The default (1 s, 2 s, 4 s, ... up to an hour) suits transient failures.
    """

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.max_s < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("need base_s >= 0, max_s >= 0, factor >= 1 and 0 <= jitter <= 1")

    def delay_s(self, attempt: int) -> float:
        exponent = min(max(attempt - 1, 0), 64)  # big attempts must not overflow the float
        raw = min(self.max_s, self.base_s * self.factor**exponent)
        spread = raw * self.jitter
        return max(0.0, raw + random.uniform(-spread, spread))


@dataclass(frozen=True)
class FixedBackoff:
    """The same wait after every failure."""

    seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError("FixedBackoff seconds must be >= 0")

    def delay_s(self, attempt: int) -> float:
        return self.seconds
