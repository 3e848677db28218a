"""JSON responses, the error envelope, and reading a bounded JSON body.

Every error a client can cause is a 4xx with ``{"error": {"code", "message"[, "argument"]}}``;
a backend that is down is a 503 with ``Retry-After``; nothing else reaches the client (no stack
trace, no engine message).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from offload.errors import (
    BackendUnavailable,
    CapabilityUnavailable,
    InvalidState,
    JobNotFound,
    OffloadError,
    QueueFull,
    UnknownTask,
    ValidationError,
    WorkflowNotFound,
)
from offload.server.jsonlimits import MAX_JSON_DEPTH, too_deep
from offload.server.schemas import ErrorBody, ErrorDetail

log = logging.getLogger("offload.server")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
BACKEND_RETRY_AFTER_S = 2  # long enough to ride out a reconnect, short enough to feel live

_encoder = msgspec.json.Encoder()
# Every JSON answer: never sniffed as HTML by a browser, never kept by a cache (job data).
JSON_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_JSON_HEADER_NAMES = {k.lower() for k in JSON_HEADERS}
_RAW_JSON_HEADERS = [(k.lower().encode(), v.encode()) for k, v in JSON_HEADERS.items()]


class HTTPError(Exception):
    """An error answer: status, stable code, message, and extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        argument: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.argument = argument
        self.headers = dict(headers or {})


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    response = Response(
        _encoder.encode(body), status_code=status, headers=headers, media_type="application/json"
    )
    if not headers or not _JSON_HEADER_NAMES & {k.lower() for k in headers}:
        response.raw_headers.extend(_RAW_JSON_HEADERS)  # pre-encoded: this is the hot path
    else:
        for name, value in JSON_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


def error_response(err: HTTPError) -> Response:
    detail = ErrorDetail(code=err.code, message=err.message, argument=err.argument)
    return json_response(ErrorBody(error=detail), err.status, err.headers)


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _backend_unavailable(exc: BackendUnavailable) -> HTTPError:
    log.warning("backend unavailable: %s", exc)
    return HTTPError(
        503,
        "backend_unavailable",
        "the job store cannot be reached right now; try again later",
        headers=retry_after(BACKEND_RETRY_AFTER_S),
    )


# The one exception -> answer table of the API and the dashboard (first match wins).
ERRORS: tuple[tuple[type[Exception], Callable[[Any], HTTPError]], ...] = (
    (
        ValidationError,
        lambda e: HTTPError(422, "invalid_arguments", str(e), argument=e.argument),
    ),
    (
        UnknownTask,
        lambda e: HTTPError(404, "unknown_task", f"no task named {e.name!r} can be enqueued here"),
    ),
    (WorkflowNotFound, lambda e: HTTPError(404, "workflow_not_found", str(e))),
    (JobNotFound, lambda e: HTTPError(404, "job_not_found", f"no job with id {e.job_id!r}")),
    (InvalidState, lambda e: HTTPError(409, "invalid_state", str(e))),
    (
        QueueFull,
        lambda e: HTTPError(429, "queue_full", str(e), headers=retry_after(e.retry_after_s)),
    ),
    (BackendUnavailable, _backend_unavailable),
    (CapabilityUnavailable, lambda e: HTTPError(501, "not_supported", str(e))),
)


def translate(exc: Exception) -> HTTPError:
    """The HTTP answer for an exception raised while serving a request (API or dashboard)."""
    if isinstance(exc, HTTPError):
        return exc
    for kind, answer in ERRORS:
        if isinstance(exc, kind):
            return answer(exc)
    if isinstance(exc, OffloadError):
        log.error("unexpected offload error while serving a request", exc_info=exc)
    else:
        log.error("unexpected error while serving a request", exc_info=exc)
    return HTTPError(500, "internal_error", "internal error; the server log has the details")


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_json_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 415 unless it is JSON and with 413 past ``max_bytes``.

    The limit is enforced while the body streams in (a declared Content-Length over it is
    refused before anything is read), so an oversized upload is never buffered whole.
    """
    if not is_json(request.headers.get("content-type", "")):
        raise HTTPError(415, "unsupported_media_type", "send the body as application/json")
    too_big = HTTPError(413, "body_too_large", f"the body is over the limit of {max_bytes} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPError(400, "client_disconnected", "the client went away") from None
    return b"".join(chunks)


_SAFE_INT = 2**53  # beyond this a JSON number's integer value is not exact anyway


def integral_floats_as_ints(body: bytes) -> bytes:
    """``2.0`` becomes ``2`` throughout a JSON document.

    JSON has one number type and JSON Schema calls 2.0 an integer, so the published schemas
    accept it; msgspec's strict decoding (kept, so that "2" is never an integer) does not.
    Rewriting integral floats first makes the two agree. Bodies without '.', 'e' or 'E' cannot
    hold a float and pass through untouched. Raises msgspec.DecodeError for invalid JSON.
    """
    if b"." not in body and b"e" not in body and b"E" not in body:
        return body
    doc = msgspec.json.decode(body)
    if not isinstance(doc, dict | list):
        return body  # a bare value is refused by the type anyway
    changed = False
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(v, float) and v.is_integer() and abs(v) < _SAFE_INT:
                node[k] = int(v)
                changed = True
            elif isinstance(v, dict | list):
                stack.append(v)
    if not changed:
        return body
    return msgspec.json.encode(doc)


def decode_body(body: bytes, type_: type[Any]) -> Any:
    """Decode a JSON body into ``type_``: 400 when it is not JSON or nested more than
    MAX_JSON_DEPTH deep, 422 naming the field."""
    if too_deep(body):
        raise HTTPError(
            400, "too_deep", f"the body nests arrays and objects over {MAX_JSON_DEPTH} deep"
        )
    try:
        return msgspec.json.decode(integral_floats_as_ints(body), type=type_)
    except msgspec.ValidationError as exc:
        field = _field_of(str(exc))
        raise HTTPError(422, "invalid_request", str(exc), argument=field) from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def _field_of(message: str) -> str | None:
    marker = "at `$."
    if marker in message:
        tail = message.split(marker, 1)[1]
        name = tail.split("`", 1)[0].split(".", 1)[0].split("[", 1)[0]
        return name or None
    for lead in ("required field `", "unknown field `"):
        if lead in message:
            return message.split(lead, 1)[1].split("`", 1)[0]
    return None
