"""Backoff policies: how long to wait before the next attempt of a failed job."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
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


ExceptionTypes = tuple[type[Exception], ...]


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures of a task retry, and after how long (``@app.task(retry_on=...,
    give_up_on=..., backoff=...)``).

    Classes match as in ``except``: a subclass matches its base. ``give_up_on`` is checked
    first (an explicit "stop" wins), then ``retry_on`` (when given, only what it names
    retries; everything else is dead at once); a retry waits the ``backoff`` of the nearest
    class in the exception's MRO, else ``default``. A timeout counts as ``TimeoutError``.
    """

    default: Backoff = field(default_factory=ExponentialBackoff)
    retry_on: ExceptionTypes | None = None
    give_up_on: ExceptionTypes = ()
    backoff: tuple[tuple[type[Exception], Backoff], ...] = ()

    def delay_s(self, error: type[BaseException], attempt: int) -> float | None:
        """Seconds before the next attempt after ``error`` ended attempt ``attempt``; None
        when the job must not retry (the caller still ends it ``dead`` when attempts run out)."""
        if issubclass(error, self.give_up_on):
            return None
        if self.retry_on is not None and not issubclass(error, self.retry_on):
            return None
        per_class = dict(self.backoff)
        for cls in error.__mro__:
            if cls in per_class:
                return per_class[cls].delay_s(attempt)
        return self.default.delay_s(attempt)


def retry_policy(
    default: Backoff,
    retry_on: object = None,
    give_up_on: object = (),
    backoff: object = None,
) -> RetryPolicy:
    """A checked :class:`RetryPolicy` from a task's options; ValueError says what is wrong."""
    if not isinstance(default, Backoff):
        raise ValueError("retry must be a Backoff (e.g. ExponentialBackoff())")
    retry = None if retry_on is None else _exception_types("retry_on", retry_on)
    give_up = _exception_types("give_up_on", give_up_on)
    both = [c.__name__ for c in retry or () if c in give_up]
    if both:
        raise ValueError(f"{', '.join(both)} cannot be in both retry_on and give_up_on")
    if backoff is None:
        backoff = {}
    if not isinstance(backoff, Mapping):
        raise ValueError("backoff must map exception classes to Backoff policies")
    pairs: list[tuple[type[Exception], Backoff]] = []
    for cls, policy in backoff.items():
        (cls,) = _exception_types("backoff", (cls,))
        if not isinstance(policy, Backoff):
            raise ValueError(f"backoff[{cls.__name__}] must be a Backoff, not {policy!r}")
        # A backoff no failure can use is a mistake in the declaration, not a no-op.
        never = issubclass(cls, give_up) or (
            retry is not None and not any(issubclass(cls, r) or issubclass(r, cls) for r in retry)
        )
        if never:
            raise ValueError(f"backoff[{cls.__name__}] is for an exception that never retries")
        pairs.append((cls, policy))
    return RetryPolicy(default, retry, give_up, tuple(pairs))


def _exception_types(option: str, value: object) -> ExceptionTypes:
    items = (value,) if isinstance(value, type) else value
    if not isinstance(items, tuple | list | frozenset | set):
        raise ValueError(f"{option} must be an exception class or a tuple of them")
    for item in items:
        if not (isinstance(item, type) and issubclass(item, Exception)):
            raise ValueError(f"{option}: {item!r} is not an Exception subclass")
    return tuple(items)
