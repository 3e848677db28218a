"""The ``beanstalk://`` URL of both forms, and how offload's names and numbers map onto
Beanstalkd's (tubes, priorities, whole-second delays)."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from offload.backends.common import check_known
from offload.errors import ConfigurationError
from offload.job import PRIORITY_MAX, PRIORITY_MIN

OPTIONS = ("store", "prefix", "timeout_s", "ttr_s", "orphan_after_s")
DEFAULT_PORT = 11300
# Time-to-run of every job put: how long a reservation holds without a ``touch``. A worker
# touches its jobs at each heartbeat (10 s by default); a worker that stops without closing
# its connection (frozen, cut off) gives its jobs back after this long. The default lease.
TTR_S = 30
# Tube names may hold these characters (beanstalkd's protocol.txt); anything else in a queue
# name is written as $XX (its UTF-8 bytes in hex), '$' included.
_TUBE_SAFE = frozenset(string.ascii_letters + string.digits + "-+/;._()")
MAX_TUBE = 200


@dataclass(frozen=True)
class BeanstalkOptions:
    host: str
    port: int
    prefix: str
    timeout_s: float
    ttr_s: int
    orphan_after_s: float | None
    store: str | None


def parse_url(url: str, options: dict[str, Any]) -> BeanstalkOptions:
    """Read ``beanstalk://host:port/?...`` and keyword options; ConfigurationError on bad
    values."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    check_known("beanstalk", query, OPTIONS)
    check_known("beanstalk", options, OPTIONS)
    query.update({k: str(v) for k, v in options.items()})
    if "store" in query and not query["store"]:
        raise ConfigurationError(
            "?store= is empty: name a state store (sqlite:///path/jobs.db, postgresql://...) "
            "or leave the option out for the store-less backend"
        )
    prefix = query.get("prefix", "offload")
    if not prefix or any(c not in _TUBE_SAFE for c in prefix) or prefix.startswith("-"):
        raise ConfigurationError(f"prefix {prefix!r}: use letters, digits and -+/;._()")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigurationError(f"bad port in {url!r}") from exc
    return BeanstalkOptions(
        host=parts.hostname or "127.0.0.1",
        port=port,
        prefix=prefix,
        timeout_s=_seconds(query, "timeout_s", 10.0),
        ttr_s=max(1, math.ceil(_seconds(query, "ttr_s", TTR_S))),
        orphan_after_s=_seconds(query, "orphan_after_s", 0) or None,
        store=query.get("store"),
    )


def _seconds(query: dict[str, str], name: str, default: float) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {raw!r}")
    return value


STORED, CARRIED = "q", "m"  # the forms' tube markers: they never share a tube


def tube_of(prefix: str, queue: str, form: str = STORED) -> str:
    """The tube of an offload queue: ``<prefix>.q.<queue>`` with a store, ``<prefix>.m.<queue>``
    without one (a worker of one form would bury the other's bodies); unsafe characters as
    $XX."""
    name = "".join(
        c if c in _TUBE_SAFE and c != "$" else "".join(f"${b:02X}" for b in c.encode())
        for c in queue
    )
    tube = f"{prefix}.{form}.{name}"
    if len(tube.encode()) > MAX_TUBE:
        raise ConfigurationError(f"queue {queue!r}: its tube name would pass {MAX_TUBE} bytes")
    return tube


def pri_of(priority: int) -> int:
    """Beanstalkd's priority (0 most urgent) of offload's (0..9, 9 most urgent)."""
    return PRIORITY_MAX - min(max(priority, PRIORITY_MIN), PRIORITY_MAX)


def delay_of(seconds: float) -> int:
    """Beanstalkd counts delays in whole seconds: rounded down (a job that comes early by
    the fraction is held by the worker that reserved it until it is due)."""
    return max(0, math.floor(seconds))
