"""The ``amqp://`` URL of both RabbitMQ forms: offload's own options, and what goes to aio-pika."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from offload.backends.common import check_known
from offload.backends.retention import OPTIONS as RETENTION_OPTIONS
from offload.errors import ConfigurationError

# offload's own URL options; the rest is aio-pika's
OPTIONS = ("store", "prefix", "timeout_s", "orphan_after_s")
# AMQP heartbeat (s) unless the URL sets ``heartbeat=``. A frozen or hung worker keeps its
# unacked messages until the broker gives up on its connection, about three heartbeats later
# (~15 s here, ~3 min with RabbitMQ's default 60 s); the store recovers the lease sooner, but
# the job runs elsewhere only once its message is back. The price of a short one: a process
# whose event loop is blocked that long is disconnected and its jobs run again.
HEARTBEAT_S = 5


def parse_url(url: str, options: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Split an ``amqp://`` URL (and keyword options) into the URL aio-pika connects with
    (``heartbeat`` defaulted to :data:`HEARTBEAT_S`) and offload's own options."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    opts = {k: query.pop(k) for k in OPTIONS if k in query}
    misplaced = sorted(k for k in query if k in RETENTION_OPTIONS)
    if misplaced and "store" in opts:  # (aio-pika would take them and ignore them)
        raise ConfigurationError(
            f"{', '.join(misplaced)}: the state store keeps the finished jobs, so retention "
            "goes in the store's URL, URL-encoded: ?store=sqlite%3A%2F%2F%2Fjobs.db%3F"
            "retention%3D1d (see docs/retention.md)"
        )
    check_known("rabbitmq", options, OPTIONS)
    opts.update({k: str(v) for k, v in options.items()})
    query.setdefault("heartbeat", str(HEARTBEAT_S))
    for name in ("timeout_s", "orphan_after_s"):
        try:
            ok = 0 < float(opts.get(name, 1)) < math.inf
        except ValueError:
            ok = False
        if not ok:
            msg = f"{name} must be a positive number of seconds, not {opts[name]!r}"
            raise ConfigurationError(msg)
    return urlunsplit(parts._replace(query=urlencode(query))), opts
