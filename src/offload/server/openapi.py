"""The OpenAPI 3.1 document, generated from the same msgspec types that validate requests and
encode responses, and from each exposed task's signature (``Task.args_schema``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from offload.job import JobState
from offload.server.api import IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_PATTERN
from offload.server.auth import SCOPES
from offload.server.schemas import RESPONSE_TYPES, EnqueueRequest

if TYPE_CHECKING:
    from offload.app import App

_REF = "#/components/schemas/"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")  # what OpenAPI allows in a component name

_STATUS_TEXT = {
    400: "Malformed JSON",
    401: "Missing or invalid bearer token",
    403: "The token lacks the scope this route needs",
    404: "No such job, or no task of that name can be enqueued here",
    409: "The job's state does not allow this, or the Idempotency-Key was used for another request",
    413: "Body over the size limit",
    415: "Body is not application/json",
    422: "Invalid input; `argument` names the field when it can",
    429: "The queue is full; try again after Retry-After seconds",
    503: "The job store is unreachable; try again after Retry-After seconds",
}


def build_openapi(
    app: App, *, title: str, version: str, auth: bool, max_wait_s: float, max_page: int
) -> dict[str, Any]:
    tasks = sorted((t for t in app.tasks.values() if t.config.expose), key=lambda t: t.name)
    types: list[Any] = [*RESPONSE_TYPES, *(t.args_type for t in tasks)]
    _, components = msgspec.json.schema_components(types, ref_template=_REF + "{name}")
    components, rename = _safe_names(components)
    body = _enqueue_body(components, [(t.name, rename[t.args_type.__name__]) for t in tasks])
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": _paths(body, auth=auth, max_wait_s=max_wait_s, max_page=max_page),
        "components": {"schemas": components},
    }
    if auth:
        doc["components"]["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": f"Scopes: {', '.join(sorted(SCOPES))} (admin implies the others).",
            }
        }
    return doc


def _safe_names(components: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Rename components whose names OpenAPI forbids (task names may hold ':' or '<>')."""
    rename = {name: _UNSAFE.sub("_", name) for name in components}
    encoded = msgspec.json.encode({rename[k]: v for k, v in components.items()}).decode()
    for old, new in rename.items():
        if old != new:
            encoded = encoded.replace(
                msgspec.json.encode(_REF + old).decode(), msgspec.json.encode(_REF + new).decode()
            )
    out: dict[str, Any] = msgspec.json.decode(encoded)
    return out, rename


# delay and run_at are two ways to say when; a request may use one of them, not both.
_BOTH_TIMES = {
    "properties": {"delay": {"type": "number"}, "run_at": {"type": "string"}},
    "required": ["delay", "run_at"],
}


def _enqueue_body(components: dict[str, Any], tasks: list[tuple[str, str]]) -> dict[str, Any]:
    """One schema per exposed task: ``task`` is its name, ``args`` its signature's schema."""
    common = {
        k: v
        for k, v in components["EnqueueRequest"]["properties"].items()
        if k not in ("task", "args")
    }
    variants = []
    for name, args_ref in tasks:
        required = ["task"]
        if components.get(args_ref, {}).get("required"):
            required.append("args")
        variants.append(
            {
                "type": "object",
                "title": f"enqueue {name}",
                "properties": {
                    "task": {"const": name},
                    "args": {"$ref": _REF + args_ref},
                    **common,
                },
                "required": required,
                "additionalProperties": False,
                "not": _BOTH_TIMES,
            }
        )
    if not variants:
        return {"$ref": _REF + EnqueueRequest.__name__}
    return variants[0] if len(variants) == 1 else {"oneOf": variants}


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF + ref}}}


def _errors(*statuses: int, auth: bool) -> dict[str, Any]:
    codes = ([401, 403] if auth else []) + list(statuses)
    out: dict[str, Any] = {}
    for code in sorted(codes):
        out[str(code)] = {"description": _STATUS_TEXT[code], "content": _json("ErrorBody")}
        if code in (429, 503):
            out[str(code)]["headers"] = {
                "Retry-After": {"schema": {"type": "string"}, "description": "Seconds"}
            }
    return out


def _op(
    summary: str, scope: str | None, auth: bool, responses: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if scope is not None and auth:
        op["security"] = [{"bearer": []}]
        op["description"] = f"Needs a token with the `{scope}` scope."
    return op


def _param(name: str, where: str, schema: dict[str, Any], text: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "schema": schema, "description": text, **kw}


def _paths(body: dict[str, Any], *, auth: bool, max_wait_s: float, max_page: int) -> dict[str, Any]:
    job_id = _param(
        "job_id",
        "path",
        {"type": "string", "minLength": 1, "maxLength": 200},
        "Job id",
        required=True,
    )
    wait = {"type": "number", "minimum": 0, "maximum": max_wait_s}
    job = {"description": "The job", "content": _json("JobOut")}
    located = {**job, "headers": {"Location": {"schema": {"type": "string"}}}}
    status = {"description": "Status", "content": _json("Status")}
    states = {"type": "string", "enum": [s.value for s in JobState]}
    return {
        "/v1/jobs": {
            "post": _op(
                "Enqueue a job of an exposed task",
                "enqueue",
                auth,
                {
                    "200": {**located, "description": "Finished within the Prefer: wait time"},
                    "202": {**located, "description": "Stored (and not finished yet)"},
                    **_errors(400, 404, 409, 413, 415, 422, 429, 503, auth=auth),
                },
                parameters=[
                    _param("Prefer", "header", {"type": "string"}, "RFC 7240, e.g. wait=5"),
                    _param(
                        "Idempotency-Key",
                        "header",
                        {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": IDEMPOTENCY_KEY_MAX,
                            "pattern": IDEMPOTENCY_KEY_PATTERN,
                        },
                        "A retried request with the same key returns the same job",
                    ),
                ],
                requestBody={"required": True, "content": {"application/json": {"schema": body}}},
            ),
            "get": _op(
                "List jobs, newest first",
                "read",
                auth,
                {"200": {"description": "A page", "content": _json("JobList")}}
                | _errors(422, 503, auth=auth),
                parameters=[
                    _param("state", "query", states, "Only jobs in this state"),
                    _param("queue", "query", {"type": "string"}, "Only jobs of this queue"),
                    _param("task", "query", {"type": "string"}, "Only jobs of this task"),
                    _param("cursor", "query", {"type": "string"}, "next_cursor of the last page"),
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": max_page},
                        "Page size (default 50)",
                    ),
                ],
            ),
        },
        "/v1/jobs/{job_id}": {
            "get": _op(
                "Get a job (optionally waiting for it to finish)",
                "read",
                auth,
                {"200": job} | _errors(404, 422, 503, auth=auth),
                parameters=[job_id, _param("wait", "query", wait, "Seconds to wait for the end")],
            )
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": _op(
                "Cancel a job",
                "admin",
                auth,
                {"200": job} | _errors(404, 409, 503, auth=auth),
                parameters=[job_id],
            )
        },
        "/v1/jobs/{job_id}/retry": {
            "post": _op(
                "Queue a dead or cancelled job again",
                "admin",
                auth,
                {"200": job} | _errors(404, 409, 503, auth=auth),
                parameters=[job_id],
            )
        },
        "/v1/queues": {
            "get": _op(
                "Queues: depth by state, limit, throughput",
                "read",
                auth,
                {"200": {"description": "Queues", "content": _json("QueueList")}}
                | _errors(503, auth=auth),
            )
        },
        "/v1/workers": {
            "get": _op(
                "Live workers",
                "read",
                auth,
                {"200": {"description": "Workers", "content": _json("WorkerList")}}
                | _errors(503, auth=auth),
            )
        },
        "/healthz": {"get": _op("The process is alive", None, auth, {"200": status})},
        "/readyz": {
            "get": _op(
                "The job store is reachable",
                None,
                auth,
                {"200": status, "503": {**status, "description": "Unreachable"}},
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                "read",
                auth,
                {"200": {"description": "Exposition", "content": {"text/plain": {}}}}
                | _errors(auth=auth),
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document",
                None,
                auth,
                {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            )
        },
    }
