"""The service's route table: one entry per operation, the single source of both the Starlette
routes (``starlette_routes``) and the OpenAPI ``paths`` (``offload.server.openapi``).

A new route is one :class:`Operation` here plus its handler on :class:`~offload.server.api.Api`;
its scope, statuses, parameters and schemas are written nowhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from offload.durations import DURATION_PATTERN
from offload.job import FINAL_STATES, JobState
from offload.server.api import IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_PATTERN, Api
from offload.server.guard import cross_site
from offload.server.http import HTTPError, error_response, retry_after, translate
from offload.server.schedules_api import list_schedules, pause_schedule, resume_schedule

if TYPE_CHECKING:
    from offload.server.service import ServiceState

Method = Callable[[Api, Request], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Limits:
    """The service's settings that bound parameters in the document."""

    max_wait_s: float
    max_page: int


SchemaOf = Callable[[Limits], dict[str, Any]]


def fixed(schema: dict[str, Any]) -> SchemaOf:
    """A parameter schema that does not depend on the service's settings."""
    return lambda _: schema


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path", "query" or "header"
    schema: SchemaOf
    description: str
    required: bool = False


@dataclass(frozen=True)
class Reply:
    """A successful (or, for readiness, documented non-error) answer."""

    description: str
    schema: str | None = None  # a component name; None: a media type without a schema
    media_type: str = "application/json"
    headers: tuple[str, ...] = ()  # string-valued headers it carries


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Method
    scope: str | None  # the token scope it needs; None: public
    summary: str
    replies: Mapping[int, Reply]
    errors: tuple[int, ...] = ()  # error statuses (401 and 403 are added when auth is on)
    params: tuple[Param, ...] = ()
    body: bool = False  # takes the enqueue body (one schema per exposed task)


_JOB_ID = Param(
    "job_id",
    "path",
    fixed({"type": "string", "minLength": 1, "maxLength": 200}),
    "Job id",
    required=True,
)
_JOB = {200: Reply("The job", "JobOut")}
# Offload-Enqueue-Outcome: "existing" (the job holding the key) or "replaced" (debounced).
_ENQUEUED = ("Location", "Idempotent-Replayed", "Offload-Enqueue-Outcome")
_SCHEDULE = Param(
    "name",
    "path",
    fixed({"type": "string", "minLength": 1, "maxLength": 200}),
    "Schedule name",
    required=True,
)
_WORKFLOW_ID = Param(
    "workflow_id",
    "path",
    fixed({"type": "string", "minLength": 1, "maxLength": 200}),
    "Workflow id",
    required=True,
)
_WORKFLOW = {200: Reply("The workflow: its steps, their states and results", "WorkflowOut")}
_STATUS = Reply("Status", "Status")

ROUTES: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/v1/jobs",
        Api.enqueue,
        "enqueue",
        "Enqueue a job of an exposed task",
        {
            200: Reply("Finished within the Prefer: wait time", "JobOut", headers=_ENQUEUED),
            202: Reply("Stored (and not finished yet)", "JobOut", headers=_ENQUEUED),
        },
        errors=(400, 404, 409, 413, 415, 422, 429, 503),
        params=(
            Param("Prefer", "header", fixed({"type": "string"}), "RFC 7240, e.g. wait=5"),
            Param(
                "Idempotency-Key",
                "header",
                fixed(
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": IDEMPOTENCY_KEY_MAX,
                        "pattern": IDEMPOTENCY_KEY_PATTERN,
                    }
                ),
                "A retried request with the same key returns the same job",
            ),
        ),
        body=True,
    ),
    Operation(
        "GET",
        "/v1/jobs",
        Api.list_jobs,
        "read",
        "List jobs, newest first",
        {200: Reply("A page", "JobList")},
        errors=(422, 503),
        params=(
            Param(
                "state",
                "query",
                fixed({"type": "string", "enum": [s.value for s in JobState]}),
                "Only jobs in this state",
            ),
            Param("queue", "query", fixed({"type": "string"}), "Only jobs of this queue"),
            Param("task", "query", fixed({"type": "string"}), "Only jobs of this task"),
            Param("cursor", "query", fixed({"type": "string"}), "next_cursor of the last page"),
            Param(
                "limit",
                "query",
                lambda lim: {"type": "integer", "minimum": 1, "maximum": lim.max_page},
                "Page size (default 50)",
            ),
        ),
    ),
    # Before /v1/jobs/{job_id}: a request on this path with another method then names this
    # route's methods in its 405 (a GET still goes to the job of id "purge").
    Operation(
        "POST",
        "/v1/jobs/purge",
        Api.purge_jobs,
        "admin",
        "Delete finished jobs for good (dead ones by default)",
        {200: Reply("How many were deleted", "Purged")},
        errors=(422, 501, 503),
        params=(
            Param(
                "state",
                "query",
                fixed({"type": "string", "enum": sorted(s.value for s in FINAL_STATES)}),
                "Only jobs in this finished state (repeat for several; default dead)",
            ),
            Param("queue", "query", fixed({"type": "string"}), "Only jobs of this queue"),
            Param(
                "older_than",
                "query",
                fixed({"type": "string", "pattern": DURATION_PATTERN}),
                "Only jobs that finished longer ago: seconds or 90s, 15m, 12h, 7d, 2w",
            ),
        ),
    ),
    Operation(
        "GET",
        "/v1/jobs/{job_id}",
        Api.get_job,
        "read",
        "Get a job (optionally waiting for it to finish)",
        _JOB,
        errors=(404, 422, 503),
        params=(
            _JOB_ID,
            Param(
                "wait",
                "query",
                lambda lim: {"type": "number", "minimum": 0, "maximum": lim.max_wait_s},
                "Seconds to wait for the end",
            ),
        ),
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        Api.cancel_job,
        "admin",
        "Cancel a job",
        _JOB,
        errors=(404, 409, 503),
        params=(_JOB_ID,),
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/retry",
        Api.retry_job,
        "admin",
        "Queue a dead or cancelled job again",
        _JOB,
        errors=(404, 409, 503),
        params=(_JOB_ID,),
    ),
    Operation(
        "GET",
        "/v1/workflows/{workflow_id}",
        Api.get_workflow,
        "read",
        "Get a workflow (chain, group): its steps, their states and results",
        _WORKFLOW,
        errors=(404, 501, 503),
        params=(_WORKFLOW_ID,),
    ),
    Operation(
        "POST",
        "/v1/workflows/{workflow_id}/cancel",
        Api.cancel_workflow,
        "admin",
        "Cancel a workflow: its pending steps never run, its running ones are revoked",
        _WORKFLOW,
        errors=(404, 501, 503),
        params=(_WORKFLOW_ID,),
    ),
    Operation(
        "GET",
        "/v1/queues",
        Api.queues,
        "read",
        "Queues: depth by state, limit, throughput",
        {200: Reply("Queues", "QueueList")},
        errors=(503,),
    ),
    Operation(
        "GET",
        "/v1/workers",
        Api.workers,
        "read",
        "Live workers",
        {200: Reply("Workers", "WorkerList")},
        errors=(503,),
    ),
    Operation(
        "GET",
        "/v1/schedules",
        list_schedules,
        "read",
        "Schedules: next and last run, the last job and its state",
        {200: Reply("Schedules", "ScheduleList")},
        errors=(501, 503),
    ),
    Operation(
        "POST",
        "/v1/schedules/{name}/pause",
        pause_schedule,
        "admin",
        "Pause a schedule (its ticks are skipped until it is resumed)",
        {200: Reply("The schedule", "ScheduleOut")},
        errors=(404, 501, 503),
        params=(_SCHEDULE,),
    ),
    Operation(
        "POST",
        "/v1/schedules/{name}/resume",
        resume_schedule,
        "admin",
        "Resume a schedule from its next tick",
        {200: Reply("The schedule", "ScheduleOut")},
        errors=(404, 501, 503),
        params=(_SCHEDULE,),
    ),
    Operation("GET", "/healthz", Api.healthz, None, "The process is alive", {200: _STATUS}),
    Operation(
        "GET",
        "/readyz",
        Api.readyz,
        None,
        "The job store is reachable",
        {200: _STATUS, 503: Reply("Unreachable", "Status")},
    ),
    Operation(
        "GET",
        "/metrics",
        Api.metrics,
        "read",
        "Prometheus metrics",
        {200: Reply("Exposition", media_type="text/plain")},
    ),
    Operation(
        "GET",
        "/openapi.json",
        Api.openapi,
        None,
        "This document",
        {200: Reply("OpenAPI 3.1")},
    ),
)


def _guarded(api: Api, op: Operation) -> Endpoint:
    """The handler, authorised for the operation's scope, every exception an error answer;
    without tokens, a request that changes something is refused when another site sent it."""
    changes = op.method not in ("GET", "HEAD")

    @functools.wraps(op.handler)
    async def endpoint(request: Request) -> Response:
        try:
            if op.scope is not None:
                authorize(api.state, request, op.scope)
            if changes and not api.state.auth.enabled:
                refused = cross_site(request.headers)
                if refused is not None:
                    raise refused
            return await op.handler(api, request)
        except Exception as exc:
            return error_response(translate(exc))

    return endpoint


def authorize(state: ServiceState, request: Request, scope: str) -> None:
    """Check the bearer token for ``scope``; a client that sent too many bad ones is refused
    (429) until its failures age out, whatever it sends meanwhile."""
    auth = state.auth
    if not auth.enabled:
        return
    client = request.client.host if request.client else ""
    wait_s = state.throttle.retry_after(client)
    if wait_s is not None:
        raise HTTPError(
            429, "too_many_failures", "too many bad tokens from here", headers=retry_after(wait_s)
        )
    authorization = request.headers.get("authorization")
    try:
        auth.check(authorization, scope)
    except HTTPError as exc:
        if exc.status == 401 and authorization:
            state.throttle.failed(client)
        raise


def _by_method(endpoints: Mapping[str, Endpoint]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        # Starlette answers 405 before calling this for a method the route does not list;
        # HEAD is GET without a body.
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return endpoint


def starlette_routes(api: Api, table: tuple[Operation, ...] = ROUTES) -> list[BaseRoute]:
    """One Starlette route per path (so a 405 names every method of the path in ``Allow``)."""
    by_path: dict[str, dict[str, Operation]] = {}
    for op in table:
        by_path.setdefault(op.path, {})[op.method] = op
    routes: list[BaseRoute] = []
    for path, ops in by_path.items():
        endpoints = {method: _guarded(api, op) for method, op in ops.items()}
        only = next(iter(ops.values()))
        endpoint = endpoints[only.method] if len(ops) == 1 else _by_method(endpoints)
        name = only.handler.__name__ if len(ops) == 1 else path.rsplit("/", 1)[-1]
        routes.append(Route(path, endpoint, methods=list(ops), name=name))
    return routes
