"""Building the ASGI service (``create_service``) and running it on uvicorn (``run_server``).

The service's lifespan opens the app's backend on the server's event loop and, when asked,
runs an embedded worker on that same loop, so one process serves HTTP and runs jobs (S1). At
shutdown the worker drains first (its grace period), then pending enqueues finish, then the
backend closes.

Mounted inside another ASGI app, a sub-app's lifespan is not run by most frameworks: the API
still works (the backend opens on first use), but embedded workers need the lifespan, e.g.
``async with service.router.lifespan_context(service): ...`` inside your own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import sys
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

import offload
from offload.app import App
from offload.errors import BackendUnavailable, ConfigurationError
from offload.server.api import Api
from offload.server.auth import TokenAuth
from offload.server.batcher import DEFAULT_MAX_BATCH, EnqueueBatcher
from offload.server.guard import LoopbackOnly, is_loopback
from offload.server.headerlimit import DEFAULT_MAX_HEADER_BYTES, HeaderLimit
from offload.server.http import DEFAULT_MAX_BODY_BYTES, HTTPError, error_response
from offload.server.metrics import Metrics
from offload.server.openapi import build_openapi
from offload.server.routes import starlette_routes
from offload.server.throttle import Throttle
from offload.server.throughput import Throughput
from offload.worker import Worker, WorkerConfig

log = logging.getLogger("offload.server")

DEFAULT_MAX_WAIT_S = 60.0  # a request held longer than this is better polled
DEFAULT_MAX_PAGE = 500
# Requests held waiting for a job's end at once (Prefer: wait, ?wait=): each holds a
# connection and a backend waiter; past this an enqueue answers at once, a GET answers 503.
DEFAULT_MAX_WAITING = 1000
DEFAULT_SWITCH_INTERVAL_S = 0.0005  # see run_server; measured with benchmarks/http_load.py


@dataclass
class ServiceState:
    """Everything one service instance owns (no module-level state)."""

    app: App
    auth: TokenAuth
    batcher: EnqueueBatcher
    metrics: Metrics
    max_body_bytes: int
    max_wait_s: float
    max_page: int
    title: str
    loopback_only: bool
    max_waiting: int = DEFAULT_MAX_WAITING
    waiting: int = 0
    throttle: Throttle = field(default_factory=Throttle)
    workers: list[Worker] = field(default_factory=list)
    extra_queues: Mapping[str, frozenset[str]] = field(default_factory=dict)
    throughput: Throughput = field(default_factory=Throughput)
    _openapi: tuple[int, dict[str, Any]] | None = None

    def openapi(self) -> dict[str, Any]:
        """The document, rebuilt only when the set of tasks changes."""
        n = len(self.app.tasks)
        if self._openapi is None or self._openapi[0] != n:
            doc = build_openapi(
                self.app,
                title=self.title,
                version=offload.__version__,
                auth=self.auth.enabled,
                max_wait_s=self.max_wait_s,
                max_page=self.max_page,
                extra_queues=self.extra_queues,
            )
            self._openapi = (n, doc)
        return self._openapi[1]


def create_service(
    app: App,
    *,
    workers: int = 0,
    worker_config: WorkerConfig | None = None,
    tokens: Mapping[str, Collection[str]] | None = None,
    insecure: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
    max_page: int = DEFAULT_MAX_PAGE,
    group_commit: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    title: str = "offload",
    dashboard: bool = True,
    dashboard_secret: bytes | None = None,
    queues_per_task: Mapping[str, Collection[str]] | None = None,
    max_waiting: int = DEFAULT_MAX_WAITING,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> Starlette:
    """The HTTP API of ``app`` as an ASGI application (see docs/http.md).

    ``workers`` > 0 runs an embedded worker with that many slots during the lifespan
    (``worker_config`` sets its other options; by default it serves every queue the app's
    tasks use). ``tokens`` maps each bearer token to its scopes (``read``, ``enqueue``,
    ``admin``). Without tokens the API answers loopback clients only (403 to others) unless
    ``insecure``. ``group_commit=False`` stores each HTTP enqueue on its own (benchmarks).
    ``dashboard`` serves the web dashboard at ``/`` with the same tokens (docs/dashboard.md);
    ``dashboard_secret`` signs its sessions (random per process when not given: give every
    process behind one load balancer the same one).

    An HTTP enqueue may name only its task's own queue, or one that ``queues_per_task``
    (``{task name: [queue, ...]}``) lists for it: an enqueue-scoped client cannot fill the
    depth limit of a queue that internal producers rely on (docs/security.md).

    ``max_waiting`` bounds the requests waiting for a job's end at once (beyond it an enqueue
    does not wait and ``GET /v1/jobs/ID?wait=`` answers 503); ``max_header_bytes`` bounds a
    request's headers (431).
    """
    if workers < 0 or max_body_bytes < 1 or max_wait_s < 0 or max_page < 1 or max_waiting < 0:
        raise ConfigurationError(
            "workers, max_body_bytes, max_wait_s, max_page, max_waiting out of range"
        )
    auth = TokenAuth.from_mapping(tokens)
    extra_queues = _queues_per_task(queues_per_task)
    embedded: list[Worker] = []
    metrics = Metrics(lambda: embedded, known_queues=default_queues(app))
    state = ServiceState(
        app=app,
        auth=auth,
        batcher=EnqueueBatcher(
            app, max_batch=max_batch, enabled=group_commit, on_batch=metrics.batch_jobs.observe
        ),
        metrics=metrics,
        max_body_bytes=max_body_bytes,
        max_wait_s=max_wait_s,
        max_page=max_page,
        title=title,
        loopback_only=not auth.enabled and not insecure,
        workers=embedded,
        extra_queues=extra_queues,
        max_waiting=max_waiting,
    )
    config = _embedded_config(app, workers, worker_config)
    routes = starlette_routes(Api(state))
    if dashboard:
        routes += _dashboard_routes(state, dashboard_secret)
    service = Starlette(
        routes=routes,
        lifespan=functools.partial(_lifespan, state, config),
        middleware=[
            Middleware(HeaderLimit, max_bytes=max_header_bytes),
            *([Middleware(LoopbackOnly)] if state.loopback_only else []),
        ],
        exception_handlers={StarletteHTTPException: _http_exception},  # type: ignore[dict-item]
    )
    # Starlette's redirect to the path with(out) a trailing slash is absolute, built from the
    # Host header: a foreign Host would be sent on to itself. A wrong path is a 404 instead.
    service.router.redirect_slashes = False
    service.state.offload = state
    return service


def _dashboard_routes(state: ServiceState, secret: bytes | None) -> list[BaseRoute]:
    """The dashboard's routes, sharing the service's tokens, throughput and login throttle."""
    from offload.server.dashboard import Dashboard

    return Dashboard(
        state.app,
        state.auth,
        loopback_only=state.loopback_only,
        secret=secret,
        title=state.title,
        throughput=state.throughput,
        throttle=state.throttle,
    ).routes


def _queues_per_task(spec: Mapping[str, Collection[str]] | None) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for task, queues in (spec or {}).items():
        if isinstance(queues, str) or not all(isinstance(q, str) and q for q in queues):
            raise ConfigurationError("queues_per_task maps a task name to a list of queue names")
        out[task] = frozenset(queues)
    return out


@asynccontextmanager
async def _lifespan(
    state: ServiceState, config: WorkerConfig | None, _: Starlette
) -> AsyncIterator[None]:
    """Open the backend, run the embedded worker; at the end drain it, then close."""
    app = state.app
    try:
        await app.open()
    except BackendUnavailable as exc:  # serve anyway: /readyz says so, routes answer 503
        log.warning("the backend is unavailable at startup: %s", exc)
    runs: list[asyncio.Task[None]] = []
    if config is not None:
        worker = Worker(app, config, listeners=[state.metrics])
        state.workers.append(worker)
        runs.append(asyncio.create_task(_run_worker(worker), name="offload-embedded-worker"))
    try:
        yield
    finally:
        for worker in state.workers:
            worker.request_stop()
        await asyncio.gather(*runs, return_exceptions=True)
        state.workers.clear()
        await state.batcher.close()
        await app.close()


def default_queues(app: App) -> tuple[str, ...]:
    """Every queue the app's tasks use, and ``default``: what an embedded worker serves."""
    return tuple(sorted({"default", *(t.config.queue for t in app.tasks.values())}))


def _embedded_config(app: App, workers: int, config: WorkerConfig | None) -> WorkerConfig | None:
    if workers == 0 and config is None:
        return None
    if config is None:
        config = WorkerConfig(queues=default_queues(app))
    return replace(config, concurrency=workers) if workers > 0 else config


async def _run_worker(worker: Worker) -> None:
    try:
        await worker.run()
    except Exception:
        log.exception("the embedded worker stopped with an error")


async def _http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(HTTPError(exc.status_code, code, str(exc.detail), headers=exc.headers))


def run_server(
    app: App,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    workers: int = 0,
    worker_config: WorkerConfig | None = None,
    tokens: Mapping[str, Collection[str]] | None = None,
    insecure: bool = False,
    log_level: str = "info",
    access_log: bool = False,
    switch_interval_s: float | None = DEFAULT_SWITCH_INTERVAL_S,
    fd: int | None = None,
    **service_options: Any,
) -> None:
    """Serve ``create_service(app, ...)`` on uvicorn (one process) until SIGINT/SIGTERM.

    Without tokens, a host that is not loopback is refused (ConfigurationError) unless
    ``insecure``; with ``insecure`` the API is open to anyone who can reach the port.
    ``access_log`` is off by default: at thousands of requests per second it costs more
    than the request itself. ``fd`` is a listening socket to accept on instead of binding
    ``host:port`` (``offload serve --processes``: several processes share one socket).

    ``switch_interval_s`` sets the process's GIL switch interval (``sys.setswitchinterval``;
    None leaves it alone). The event loop and a backend's I/O thread (SQLite's writer) share
    the GIL: at the default 5 ms, each time the writer comes back from the engine it may wait
    up to 5 ms behind a busy loop, which shows directly in enqueue latency under load.
    """
    import uvicorn

    if switch_interval_s is not None:
        sys.setswitchinterval(switch_interval_s)

    sockets = None if fd is None else [inherited_socket(fd)]
    # What counts is the address the socket listens on, not the --host a child was told; a
    # supervised child's parent has warned already.
    exposed = host if sockets is None else str(sockets[0].getsockname()[0])
    check_exposure(exposed, tokens, insecure=insecure, warn=fd is None)
    service = create_service(
        app,
        workers=workers,
        worker_config=worker_config,
        tokens=tokens,
        insecure=insecure,
        **service_options,
    )
    config = uvicorn.Config(
        service, host=host, port=port, log_level=log_level, access_log=access_log, lifespan="on"
    )
    uvicorn.Server(config).run(sockets=sockets)


def check_exposure(
    host: str, tokens: Mapping[str, Collection[str]] | None, *, insecure: bool, warn: bool = True
) -> None:
    """Refuse (ConfigurationError) a host that is not loopback without tokens unless
    ``insecure``; with ``warn``, log that the API is open when it is."""
    if not tokens and not insecure and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve on {host} without API tokens: configure tokens, bind to "
            "127.0.0.1, or pass insecure"
        )
    if not tokens and warn:
        log.warning(
            "no API tokens configured: the API is open to %s",
            "anyone" if insecure else "this machine only",
        )


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port``, for ``--processes`` children to accept on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.listen(2048)  # uvicorn's backlog
    return sock  # (not inheritable: Popen's pass_fds hands it to the children it names)


def inherited_socket(fd: int) -> socket.socket:
    """The listening socket at ``fd`` (its family read from the socket itself)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigurationError(f"file descriptor {fd} is not an open socket: {exc}") from None
    if sock.type != socket.SOCK_STREAM:
        raise ConfigurationError(f"file descriptor {fd} is not a stream socket")
    sock.set_inheritable(False)  # a subprocess a job starts must not keep the port open
    return sock
