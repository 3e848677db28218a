"""Reading the dashboard's query strings and forms: every parameter known, every value checked.

Anything else is a :class:`BadRequest`, shown as a 400 page: a hand-edited URL never causes a
500. Times in the UI are UTC; a time without an offset is read as UTC.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request

from offload.job import JobFilter, JobState
from offload.server.http import HTTPError

MAX_VALUE_CHARS = 500
MAX_FORM_BYTES = 64 * 1024
PAGE_SIZES = (20, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
FILTER_KEYS = ("state", "queue", "task", "q", "after", "before")
MESSAGES = {  # ?msg= values: fixed texts, so nothing a link carries is reflected into the page
    "retried": "The job was queued again.",
    "cancelled": "The job was cancelled.",
    "deleted": "The job was deleted.",
    "paused": "The queue is paused: workers take no new jobs from it.",
    "resumed": "The queue is resumed.",
    "purged": "The finished jobs chosen were deleted.",
    "logged_out": "You are logged out.",
    "schedule_paused": "The schedule is paused: its ticks are skipped until it is resumed.",
    "schedule_resumed": "The schedule is resumed from its next tick.",
}


class BadRequest(HTTPError):
    """A query or form the dashboard cannot use (shown as a 400 page)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "bad_request", message)


def query_of(request: Request, allowed: Collection[str]) -> dict[str, str]:
    """The query parameters, each at most once and from ``allowed``."""
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise BadRequest(f"unknown query parameter {key!r}")
        if key in out:
            raise BadRequest(f"the query parameter {key!r} is given twice")
        if len(value) > MAX_VALUE_CHARS:
            raise BadRequest(f"the query parameter {key!r} is too long")
        out[key] = value
    return out


async def form_of(request: Request, allowed: Collection[str]) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body, each field at most once and known."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadRequest("the form is too large")
    if not body:  # an empty form: the CSRF check refuses it
        return {}
    if kind != "application/x-www-form-urlencoded":
        raise BadRequest("the form must be sent as application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form could not be read") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed or key in out or len(value) > MAX_VALUE_CHARS:
            raise BadRequest(f"unexpected form field {key[:40]!r}")
        out[key] = value
    return out


def parse_time(raw: str, name: str) -> float | None:
    """An ISO 8601 time (UTC unless it carries an offset) as epoch seconds; '' is None."""
    if not raw.strip():
        return None
    try:
        when = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        raise BadRequest(f"{name} must be a time like 2024-05-01T13:30 (UTC)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def format_time_input(ts: float | None) -> str:
    """The value of a datetime-local input for ``ts`` (UTC, to the second)."""
    if ts is None or not math.isfinite(ts):
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class JobQuery:
    """The filter of the jobs page, as it appears in the URL."""

    state: JobState | None = None
    queue: str | None = None
    task: str | None = None
    text: str | None = None
    after: float | None = None
    before: float | None = None

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> JobQuery:
        state: JobState | None = None
        if values.get("state"):
            try:
                state = JobState(values["state"])
            except ValueError:
                names = ", ".join(s.value for s in JobState)
                raise BadRequest(f"state must be one of {names}") from None
        after = parse_time(values.get("after", ""), "after")
        before = parse_time(values.get("before", ""), "before")
        if after is not None and before is not None and after >= before:
            raise BadRequest("'after' must be earlier than 'before'")
        return cls(
            state=state,
            queue=values.get("queue") or None,
            task=values.get("task") or None,
            text=values.get("q") or None,
            after=after,
            before=before,
        )

    def to_filter(self, *, cursor: str | None = None, limit: int = DEFAULT_PAGE_SIZE) -> JobFilter:
        return JobFilter(
            state=self.state,
            queue=self.queue,
            task=self.task,
            args_contains=self.text,
            created_after=self.after,
            created_before=self.before,
            cursor=cursor,
            limit=limit,
        )

    def params(self) -> dict[str, str]:
        """The URL parameters of this filter (empty ones left out)."""
        raw = {
            "state": self.state.value if self.state else "",
            "queue": self.queue or "",
            "task": self.task or "",
            "q": self.text or "",
            "after": format_time_input(self.after),
            "before": format_time_input(self.before),
        }
        return {k: v for k, v in raw.items() if v}

    def query_string(self, **extra: str) -> str:
        return urlencode({**self.params(), **{k: v for k, v in extra.items() if v}})

    @property
    def empty(self) -> bool:
        return not self.params()


def page_size(raw: str | None) -> int:
    if not raw:
        return DEFAULT_PAGE_SIZE
    if not raw.isdigit() or int(raw) not in PAGE_SIZES:
        raise BadRequest(f"limit must be one of {', '.join(map(str, PAGE_SIZES))}")
    return int(raw)


def message(raw: str | None) -> str | None:
    if not raw:
        return None
    if raw not in MESSAGES:
        raise BadRequest("unknown message")
    return MESSAGES[raw]
