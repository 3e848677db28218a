"""The dashboard's routes, and :func:`create_dashboard` to mount it in any Starlette app.

Every link the dashboard makes is relative to the ``root_path`` of the request, so the same
routes work at ``/`` of ``offload serve`` and under any prefix of a user's application.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from offload.app import App
from offload.server.auth import TokenAuth
from offload.server.dashboard.actions import BULK_FIELDS, PURGE_FIELDS, Actions
from offload.server.dashboard.core import Core
from offload.server.dashboard.pages import Pages
from offload.server.dashboard.params import BadRequest, query_of
from offload.server.dashboard.schedules import SchedulePages
from offload.server.dashboard.security import Guard, add_security_headers
from offload.server.throttle import Throttle
from offload.server.throughput import Throughput

STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
LOOPBACK_BANNER = (
    "No API tokens are configured: this dashboard is open, without login, to anyone on this "
    "machine (loopback clients only)."
)
INSECURE_BANNER = (
    "No API tokens are configured and the server was started insecure: anyone who can reach "
    "it can see and change every job."
)


class Dashboard:
    """The dashboard of one app. ``routes`` can be added to any Starlette router.

    ``throughput`` is shared with the HTTP API when both are served together, so both show
    the same rates (one series of snapshots per service); ``throttle`` likewise, so failed
    logins and bad bearer tokens count against one budget per client."""

    def __init__(
        self,
        app: App,
        auth: TokenAuth,
        *,
        loopback_only: bool = True,
        secret: bytes | None = None,
        title: str = "offload",
        throughput: Throughput | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        banner = None
        if not auth.enabled:
            banner = LOOPBACK_BANNER if loopback_only else INSECURE_BANNER
        guard = Guard(auth, secret, loopback_only=loopback_only, throttle=throttle)
        self.core = Core(app, guard, banner=banner, title=title)
        self.pages = Pages(self.core, throughput)
        self.actions = Actions(self.core, self.pages)
        self._static = _load_static()
        digest = hashlib.sha256(b"".join(body for body, _ in self._static.values()))
        self.core.static_version = digest.hexdigest()[:12]

    @property
    def routes(self) -> list[BaseRoute]:
        page, act, p, a = self.core.page, self.core.action, self.pages, self.actions
        sp = SchedulePages(self.core)
        return [
            Route("/", page(p.overview), methods=["GET"], name="dashboard_overview"),
            Route("/overview.json", page(p.overview_json, json=True), methods=["GET"]),
            Route("/queues", page(p.queues), methods=["GET"], name="dashboard_queues"),
            Route("/queues/pause", act(a.pause, ("queue", "paused")), methods=["POST"]),
            Route("/queues/purge", act(a.purge, PURGE_FIELDS), methods=["POST"]),
            Route("/jobs", page(p.jobs), methods=["GET"], name="dashboard_jobs"),
            Route("/jobs/bulk", page(p.bulk_confirm), methods=["GET"]),
            Route("/jobs/bulk", act(a.bulk_apply, BULK_FIELDS), methods=["POST"]),
            Route("/jobs/{job_id}", page(p.job), methods=["GET"], name="dashboard_job"),
            Route("/jobs/{job_id}/{action}", act(a.job_action, ()), methods=["POST"]),
            Route("/dead", page(p.dead), methods=["GET"], name="dashboard_dead"),
            Route("/workflows/{workflow_id}", page(p.workflow), methods=["GET"]),
            Route(
                "/dead/{group_id}/{action}",
                act(a.dead_group, ("queue", "task", "count")),
                methods=["POST"],
            ),
            Route("/workers", page(p.workers), methods=["GET"], name="dashboard_workers"),
            Route("/schedules", page(sp.schedules), methods=["GET"], name="dashboard_schedules"),
            Route("/schedules/pause", act(sp.pause, ("name", "paused")), methods=["POST"]),
            Route("/login", a.login, methods=["GET", "POST"], name="dashboard_login"),
            Route("/logout", act(a.logout, ()), methods=["POST"]),
            Route("/static/{name}", self.static, methods=["GET"]),
        ]

    async def static(self, request: Request) -> Response:
        found = self._static.get(str(request.path_params["name"]))
        try:
            query_of(request, ("v",))
        except BadRequest:
            found = None
        if found is None:
            return add_security_headers(PlainTextResponse("not found", status_code=404))
        body, media_type = found
        response = Response(body, media_type=media_type)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return add_security_headers(response, cache=True)


def _load_static() -> dict[str, tuple[bytes, str]]:
    """Our own CSS and JS, read once; only these names are served (no paths, no listing)."""
    out = {}
    for entry in resources.files("offload.server.dashboard").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return out


def create_dashboard(
    app: App,
    *,
    tokens: Mapping[str, Collection[str]] | None = None,
    insecure: bool = False,
    secret: bytes | None = None,
    title: str = "offload",
) -> Starlette:
    """The dashboard alone, as an ASGI app to mount anywhere (``Mount("/ops", app=...)``).

    ``tokens`` are the HTTP API's (``{token: scopes}``): viewing needs ``read``, actions
    ``admin``. Without tokens only loopback clients are answered, unless ``insecure``.
    ``secret`` signs sessions and CSRF tokens (random per process when not given: a restart
    logs everyone out; give the same secret to every process behind one load balancer).

    The app's backend opens on first use; close it yourself (``await app.close()``) when your
    application shuts down.
    """
    from offload.server.guard import LoopbackOnly

    auth = TokenAuth.from_mapping(tokens)
    loopback_only = not auth.enabled and not insecure
    dashboard = Dashboard(app, auth, loopback_only=loopback_only, secret=secret, title=title)
    service = Starlette(
        routes=dashboard.routes,
        middleware=[Middleware(LoopbackOnly)] if loopback_only else [],
        exception_handlers={StarletteHTTPException: _not_here},  # type: ignore[dict-item]
    )
    service.router.redirect_slashes = False  # its redirect follows the Host header
    return service


async def _not_here(request: Request, exc: StarletteHTTPException) -> Response:
    """404 and 405 outside the dashboard's routes, with the same headers as its pages."""
    response = PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=exc.headers)
    return add_security_headers(response)
