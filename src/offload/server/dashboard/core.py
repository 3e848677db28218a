"""The dashboard's request plumbing: who is asking, rendering, errors, headers.

Every page handler receives a :class:`Page` (the request, the viewer, this browser's CSRF
token, and link building relative to wherever the dashboard is mounted) and returns a
response; :meth:`Core.page` and :meth:`Core.action` wrap handlers with authentication, CSRF
checks, error pages and security headers, so no handler can forget one.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

import jinja2
import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from offload.app import App
from offload.backends.base import Backend
from offload.server.dashboard.params import form_of
from offload.server.dashboard.security import (
    CSRF_COOKIE,
    Guard,
    Viewer,
    add_security_headers,
    set_cookie,
)
from offload.server.http import HTTPError, json_response, translate
from offload.server.jsonlimits import MAX_JSON_DEPTH, too_deep

log = logging.getLogger("offload.server.dashboard")
T = TypeVar("T")
CSRF_COOKIE_MAX_AGE = 30 * 24 * 3600


# Headings of the error pages; the status and message come from the server's one
# exception -> answer table (offload.server.http.translate).
TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    409: "Not possible now",
    422: "Invalid input",
    429: "Queue full",
    501: "Not available",
    503: "Backend unavailable",
}


class PageError(HTTPError):
    """An error page with a status, a title and a plain message."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(status, "page_error", message)
        self.title = title


@dataclass(frozen=True)
class Page:
    request: Request
    viewer: Viewer
    csrf: str

    @property
    def root(self) -> str:
        return str(self.request.scope.get("root_path", "")).rstrip("/")

    def url(self, path: str, query: Mapping[str, str] | str | None = None) -> str:
        """A link to ``path`` of the dashboard, wherever it is mounted."""
        qs = query if isinstance(query, str) else urlencode(query or {})
        return f"{self.root}{path}" + (f"?{qs}" if qs else "")


HOST_ERROR = PageError(
    403,
    "Forbidden",
    "This dashboard has no tokens and answers on this machine only: open it at "
    "http://127.0.0.1:PORT/ or http://localhost:PORT/.",
)
PageHandler = Callable[[Page], Awaitable[Response]]
ActionHandler = Callable[[Page, dict[str, str]], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


class Core:
    def __init__(self, app: App, guard: Guard, *, banner: str | None, title: str) -> None:
        self.app = app
        self.guard = guard
        self.banner = banner
        self.title = title
        self.static_version = ""
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("offload.server.dashboard", "templates"),
            autoescape=True,  # every template is HTML; nothing is marked safe by hand
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(time=fmt_time, ago=fmt_ago, duration=fmt_duration, json=fmt_json)
        env.filters["first_line"] = first_line
        self.templates = Jinja2Templates(env=env)

    async def call(self, fn: Callable[[Backend], Awaitable[T]]) -> T:
        return await self.app.call(fn)

    # -- wrapping handlers -------------------------------------------------------------------

    def page(self, handler: PageHandler, *, json: bool = False) -> Endpoint:
        """A GET page for viewers with the ``read`` scope (others go to the login page;
        ``json`` endpoints answer 401 instead, for the page's script to notice)."""

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            viewer = self.guard.viewer(request)
            nonce, fresh = self.guard.csrf_nonce(request)
            csrf = self.guard.csrf_token(request, nonce)
            page = Page(request, viewer or Viewer(frozenset(), False), csrf)
            if not self.guard.host_ok(request):
                response: Response = self.error(page, HOST_ERROR)
            elif viewer is None and json:
                response = json_response({"error": "login needed"}, 401)
            elif viewer is None:
                response = RedirectResponse(page.url("/login"), status_code=303)
            elif not viewer.can_read:
                response = self.error(page, PageError(403, "Forbidden", "Your token cannot read."))
            else:
                response = await self._run(page, handler(page))
            if fresh:
                set_cookie(request, response, CSRF_COOKIE, nonce, CSRF_COOKIE_MAX_AGE)
            return add_security_headers(response)

        return endpoint

    def action(self, handler: ActionHandler, fields: Collection[str]) -> Endpoint:
        """A POST for viewers with the ``admin`` scope, carrying this browser's CSRF token."""

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            viewer = self.guard.viewer(request) or Viewer(frozenset(), False)
            nonce, _ = self.guard.csrf_nonce(request)
            page = Page(request, viewer, self.guard.csrf_token(request, nonce))
            response = await self._run(page, self._act(page, viewer, handler, fields))
            return add_security_headers(response)

        return endpoint

    async def _act(
        self, page: Page, viewer: Viewer, handler: ActionHandler, fields: Collection[str]
    ) -> Response:
        if not self.guard.host_ok(page.request):
            raise HOST_ERROR
        form = await form_of(page.request, {*fields, "csrf"})
        if not self.guard.csrf_ok(page.request, form.pop("csrf", None)):
            raise PageError(
                403,
                "Form expired",
                "This form's security token is missing or out of date. Go back, reload the "
                "page and try again.",
            )
        if not viewer.can_act:
            raise PageError(403, "Forbidden", "Changing jobs and queues needs the admin scope.")
        return await handler(page, form)

    async def _run(self, page: Page, work: Awaitable[Response]) -> Response:
        try:
            return await work
        except Exception as exc:
            err = translate(exc)
            title = exc.title if isinstance(exc, PageError) else TITLES.get(err.status, "Error")
            response = self.error(page, PageError(err.status, title, err.message))
            response.headers.update(err.headers)
            return response

    # -- rendering ---------------------------------------------------------------------------

    def render(self, page: Page, name: str, status: int = 200, **context: Any) -> Response:
        base = {
            "page": page,
            "viewer": page.viewer,
            "csrf": page.csrf,
            "url": page.url,
            "static": lambda f: page.url(f"/static/{f}", {"v": self.static_version}),
            "banner": self.banner,
            "title": self.title,
            "auth_enabled": not self.guard.open,
        }
        return self.templates.TemplateResponse(page.request, name, {**base, **context}, status)

    def error(self, page: Page, err: PageError) -> Response:
        return self.render(page, "error.html", err.status, error=err, nav="")


# -- formatting (template filters) -----------------------------------------------------------


def fmt_time(ts: float | None) -> str:
    if ts is None or not math.isfinite(ts):
        return "—"
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"
    except (OverflowError, OSError, ValueError):
        return "—"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = abs(seconds)
    if s < 1:
        text = f"{s * 1000:.0f} ms"
    elif s < 120:
        text = f"{s:.1f} s"
    elif s < 7200:
        text = f"{s / 60:.0f} min"
    elif s < 172800:
        text = f"{s / 3600:.0f} h"
    else:
        text = f"{s / 86400:.0f} d"
    return text if seconds >= 0 else f"-{text}"


def fmt_ago(ts: float | None) -> str:
    if ts is None or not math.isfinite(ts):
        return "—"
    delta = time.time() - ts
    return f"in {fmt_duration(-delta)}" if delta < 0 else f"{fmt_duration(delta)} ago"


def fmt_json(raw: bytes | None) -> str:
    """Stored JSON, indented for reading; anything that does not decode is shown as it is."""
    if raw is None:
        return "—"
    if too_deep(raw):
        return f"(too deeply nested to show: over {MAX_JSON_DEPTH} levels) " + repr(raw)[:2000]
    try:
        return msgspec.json.format(msgspec.json.encode(msgspec.json.decode(raw)), indent=2).decode()
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return repr(raw)[:5000]


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""
