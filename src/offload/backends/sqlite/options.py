"""Parsing of ``sqlite:///path?option=...`` URLs and their keyword options."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from offload.backends import retention
from offload.backends.common import check_known, flag
from offload.errors import ConfigurationError

_KNOWN = ("synchronous", "busy_timeout_ms", "poll_ms", "doorbell", *retention.OPTIONS)


def parse_url(url: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The file's absolute path and the validated options (keyword ``options`` win over the
    URL's query); raises ConfigurationError for a malformed URL or option."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc not in ("", "localhost"):
        raise ConfigurationError(f"not a sqlite URL: {url!r} (expected sqlite:///path/to/file.db)")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:":
        raise ConfigurationError(
            f"{url!r} names no file: use sqlite:///relative.db or sqlite:////absolute.db "
            "(an in-memory SQLite cannot be shared by the reader and writer; use memory://)"
        )
    opts: dict[str, Any] = dict(parse_qsl(parts.query))
    opts.update(options)
    check_known("sqlite", opts, _KNOWN)
    sync = str(opts.get("synchronous", "full")).upper()
    if sync not in ("FULL", "NORMAL"):
        raise ConfigurationError(f"synchronous must be 'full' or 'normal', not {sync.lower()!r}")
    try:
        busy_ms = int(opts.get("busy_timeout_ms", 5000))
        poll_ms = int(opts.get("poll_ms", 50))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"sqlite option is not a number: {exc}") from None
    doorbell = flag("doorbell", opts.get("doorbell", True))
    if busy_ms < 0 or poll_ms <= 0:
        raise ConfigurationError("busy_timeout_ms must be >= 0 and poll_ms > 0")
    return os.path.abspath(path), {
        "synchronous": sync,
        "busy_timeout_ms": busy_ms,
        "poll_ms": poll_ms,
        "retention": retention.parse_retention(opts),
        "doorbell": doorbell,
    }
