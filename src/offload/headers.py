"""Job headers: small text metadata that travels with a job (trace context, request ids).

A job's headers are set at enqueue (``task.options(headers={...})``, and by hooks'
``before_enqueue``, which may add to ``job.headers`` in place), stored with the job by every
backend, and read back by the worker (``current_job().headers``) and the HTTP API. They are
bounded so that a job record stays small: the bounds below are checked after the enqueue
hooks ran, and a job over them is refused with :class:`offload.ValidationError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from offload.errors import ValidationError

MAX_HEADERS = 32
MAX_NAME_CHARS = 64
MAX_VALUE_CHARS = 1024
MAX_TOTAL_CHARS = 4096  # names and values together: a W3C traceparent is 55, tracestate <= 512

# Names as HTTP field names (RFC 9110 tokens), so they can cross any carrier unchanged.
HEADER_NAME_PATTERN = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"
_NAME = re.compile(HEADER_NAME_PATTERN)


def check_headers(headers: object) -> dict[str, str]:
    """``headers`` as a plain dict of str to str, or :class:`ValidationError` saying why not."""
    if not isinstance(headers, Mapping):
        raise ValidationError("headers must be a mapping of str to str", argument="headers")
    if len(headers) > MAX_HEADERS:
        raise ValidationError(f"at most {MAX_HEADERS} headers", argument="headers")
    total = 0
    for name, value in headers.items():
        if not (isinstance(name, str) and len(name) <= MAX_NAME_CHARS and _NAME.fullmatch(name)):
            raise ValidationError(
                f"header name {name!r} must be 1-{MAX_NAME_CHARS} token characters "
                "(letters, digits, !#$%&'*+-.^_`|~)",
                argument="headers",
            )
        if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
            raise ValidationError(
                f"header {name!r} must be a string of at most {MAX_VALUE_CHARS} characters",
                argument="headers",
            )
        total += len(name) + len(value)
    if total > MAX_TOTAL_CHARS:
        raise ValidationError(
            f"headers hold {total} characters; at most {MAX_TOTAL_CHARS}", argument="headers"
        )
    return dict(headers)
