"""Rate limits and concurrency limits: their declaration, parsed once, and the buckets a job
carries.

Declared on a task (``@app.task(rate_limit="100/s")``, ``rate_limit=RateLimit("10/m",
key="customer_id")``, ``concurrency_key="account_id", max_per_key=1``) or on a queue
(``app.limit_queue("images", max_running=50, rate_limit="20/s")``). A bad spec is a
:class:`ConfigurationError` at declaration, naming the task or queue.

At enqueue the declarations become the job's *buckets* (see :mod:`offload.backends.limits`),
the key ones taken from the job's validated arguments; the backend enforces them inside its
claim. A key argument that is missing (None) is a :class:`ValidationError`, and nothing is
stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from offload.backends.limits import FAIR_PREFIX, bucket_text, parse_bucket
from offload.errors import ConfigurationError, ValidationError

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_SPEC_RE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")
_MAX_KEY_CHARS = 200  # a key value longer than this is refused at enqueue


@dataclass(frozen=True)
class RateLimit:
    """``RateLimit("10/m")``: at most 10 starts in any minute; with ``key="customer_id"``,
    per value of that argument. Periods: ``/s``, ``/m``, ``/h``."""

    spec: str
    key: str | None = None

    def parsed(self, owner: str) -> tuple[int, float]:
        match = _SPEC_RE.match(self.spec) if isinstance(self.spec, str) else None
        if match is None or int(match.group(1)) < 1:
            raise ConfigurationError(
                f"{owner}: rate limit {self.spec!r} is not '<count>/s', '/m' or '/h' "
                "with a count >= 1"
            )
        return int(match.group(1)), _PERIODS[match.group(2)]


def _positive(value: object, what: str, owner: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{owner}: {what} must be an integer >= 1, not {value!r}")
    return value


@dataclass(frozen=True)
class TaskLimits:
    """A task's limits, parsed and checked against its parameters."""

    name: str
    rate: tuple[int, float, str | None] | None = None  # count, period, key argument
    concurrency_key: str | None = None
    max_per_key: int = 1
    fair_key: str | None = None  # claims rotate among this argument's values (fairness)

    @classmethod
    def declare(
        cls,
        name: str,
        params: Sequence[str],
        rate_limit: str | RateLimit | None,
        concurrency_key: str | None,
        max_per_key: int | None,
        fair_key: str | None = None,
    ) -> TaskLimits | None:
        owner = f"task {name!r}"
        if (
            rate_limit is None
            and concurrency_key is None
            and max_per_key is None
            and fair_key is None
        ):
            return None
        if fair_key is not None and not isinstance(fair_key, str):
            raise ConfigurationError(f"{owner}: fair_key names one argument, not {fair_key!r}")
        _check_param(fair_key, params, owner)
        rate = None
        if rate_limit is not None:
            limit = RateLimit(rate_limit) if isinstance(rate_limit, str) else rate_limit
            if not isinstance(limit, RateLimit):
                raise ConfigurationError(f"{owner}: rate_limit takes '100/s' or a RateLimit")
            count, period = limit.parsed(owner)
            _check_param(limit.key, params, owner)
            rate = (count, period, limit.key)
        if max_per_key is not None and concurrency_key is None:
            raise ConfigurationError(f"{owner}: max_per_key needs a concurrency_key")
        _check_param(concurrency_key, params, owner)
        per_key = 1 if max_per_key is None else _positive(max_per_key, "max_per_key", owner)
        return cls(name, rate, concurrency_key, per_key, fair_key)

    def buckets(self, args: bytes) -> list[str]:
        """The buckets of one job with these (validated JSON) arguments."""
        values: Mapping[str, Any] = {}
        if (self.rate and self.rate[2]) or self.concurrency_key or self.fair_key:
            values = msgspec.json.decode(args)
        out = []
        if self.fair_key is not None:  # first, always: the SQL engines index it as limits[1]
            out.append(FAIR_PREFIX + self._value("fair key", self.fair_key, values))
        if self.rate is not None:
            count, period, key = self.rate
            out.append(bucket_text(count, period, self._scope("rate", key, values)))
        if self.concurrency_key is not None:
            scope = self._scope("key", self.concurrency_key, values)
            out.append(bucket_text(self.max_per_key, 0, scope))
        return out

    def _scope(self, kind: str, key: str | None, values: Mapping[str, Any]) -> str:
        if key is None:
            return f"task:{kind}:{self.name}"
        return f"task:{kind}:{self.name}:{self._value('limit key', key, values)}"

    def _value(self, what: str, key: str, values: Mapping[str, Any]) -> str:
        """``key=<JSON of its value>``; a missing (None) or too long value is refused."""
        value = values.get(key)
        if value is None:
            raise ValidationError(
                f"task {self.name}: argument {key!r} is the {what} and must be given",
                argument=key,
            )
        text = msgspec.json.encode(value).decode()
        if len(text) > _MAX_KEY_CHARS:
            raise ValidationError(
                f"task {self.name}: {what} {key!r} is longer than {_MAX_KEY_CHARS} characters",
                argument=key,
            )
        return f"{key}={text}"


def _check_param(key: str | None, params: Sequence[str], owner: str) -> None:
    if key is not None and key not in params:
        raise ConfigurationError(f"{owner}: limit key {key!r} is not one of its arguments")


@dataclass(frozen=True)
class QueueLimits:
    """A queue's limits across the fleet: ``max_running`` jobs at once, ``rate_limit`` starts."""

    queue: str
    buckets: tuple[str, ...]

    @classmethod
    def declare(
        cls, queue: str, max_running: int | None, rate_limit: str | RateLimit | None
    ) -> QueueLimits:
        owner = f"queue {queue!r}"
        out = []
        if rate_limit is not None:
            limit = RateLimit(rate_limit) if isinstance(rate_limit, str) else rate_limit
            if not isinstance(limit, RateLimit) or limit.key is not None:
                raise ConfigurationError(f"{owner}: rate_limit takes '100/s' (no key)")
            count, period = limit.parsed(owner)
            out.append(bucket_text(count, period, f"queue:rate:{queue}"))
        if max_running is not None:
            out.append(
                bucket_text(
                    _positive(max_running, "max_running", owner), 0, f"queue:running:{queue}"
                )
            )
        if not out:
            raise ConfigurationError(f"{owner}: give max_running, rate_limit or both")
        return cls(queue, tuple(out))


def describe(text: str) -> str:
    """A bucket for people: ``at most 1 running · task:key:send:account=42`` or
    ``at most 100 per 1s · queue:rate:images``."""
    try:
        b = parse_bucket(text)
    except ValueError:
        return text
    if not b.is_rate:
        return f"at most {b.cap} running · {b.scope}"
    period = f"{b.period_s:g}s"
    return f"at most {b.cap} per {period} · {b.scope}"


def family(text: str) -> str:
    """A bucket without its key value (``task:key:send:account``), a label of bounded
    cardinality for metrics."""
    scope = text.split("/", 2)[-1]
    head, sep, _ = scope.partition("=")
    return head if sep else scope
