"""The OpenAPI 3.1 document, generated from the route table (``offload.server.routes``), the
same msgspec types that validate requests and encode responses, and each exposed task's
signature (``Task.args_schema``)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from offload.server.auth import SCOPES
from offload.server.routes import ROUTES, Limits, Operation, Reply
from offload.server.schemas import RESPONSE_TYPES, EnqueueRequest

if TYPE_CHECKING:
    from offload.app import App

_REF = "#/components/schemas/"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")  # what OpenAPI allows in a component name

_STATUS_TEXT = {
    400: "Malformed JSON, or nested more than 64 levels",
    401: "Missing or invalid bearer token",
    403: "The token lacks the scope this route needs",
    404: "No such job, or no task of that name can be enqueued here",
    409: "The job's state does not allow this, the Idempotency-Key was used for another "
    "request, or the key is held by a job of another task",
    413: "Body over the size limit",
    415: "Body is not application/json",
    422: "Invalid input; `argument` names the field when it can",
    429: "The queue is full, or too many bad tokens came from this client; try again after "
    "Retry-After seconds",
    501: "The backend does not offer this (e.g. workflows on Redis or a store-less broker)",
    503: "The job store is unreachable, or too many requests are waiting; try again after "
    "Retry-After seconds",
}


def build_openapi(
    app: App,
    *,
    title: str,
    version: str,
    auth: bool,
    max_wait_s: float,
    max_page: int,
    extra_queues: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Any]:
    tasks = sorted((t for t in app.tasks.values() if t.config.expose), key=lambda t: t.name)
    types: list[Any] = [*RESPONSE_TYPES, *(t.args_type for t in tasks)]
    _, components = msgspec.json.schema_components(types, ref_template=_REF + "{name}")
    components, rename = _safe_names(components)
    extra = extra_queues or {}
    body = _enqueue_body(
        components,
        [
            (t.name, rename[t.args_type.__name__], {t.config.queue, *extra.get(t.name, ())})
            for t in tasks
        ],
    )
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": _paths(body, auth=auth, limits=Limits(max_wait_s=max_wait_s, max_page=max_page)),
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


def _enqueue_body(
    components: dict[str, Any], tasks: list[tuple[str, str, set[str]]]
) -> dict[str, Any]:
    """One schema per exposed task: ``task`` is its name, ``args`` its signature's schema,
    ``queue`` one of the queues it may be enqueued into over HTTP."""
    common = {
        k: v
        for k, v in components["EnqueueRequest"]["properties"].items()
        if k not in ("task", "args")
    }
    variants = []
    for name, args_ref, queues in tasks:
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
                    "queue": {"anyOf": [{"enum": sorted(queues)}, {"type": "null"}]},
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


def _reply(reply: Reply) -> dict[str, Any]:
    content = {"schema": {"$ref": _REF + reply.schema}} if reply.schema else {}
    out: dict[str, Any] = {"description": reply.description, "content": {reply.media_type: content}}
    if reply.headers:
        out["headers"] = {h: {"schema": {"type": "string"}} for h in reply.headers}
    return out


def _operation(op: Operation, body: dict[str, Any], auth: bool, limits: Limits) -> dict[str, Any]:
    responses = {str(code): _reply(reply) for code, reply in op.replies.items()}
    out: dict[str, Any] = {"summary": op.summary, "responses": responses | _errors(op, auth)}
    if op.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "schema": p.schema(limits),
                "description": p.description,
                **({"required": True} if p.required else {}),
            }
            for p in op.params
        ]
    if op.body:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if op.scope is not None and auth:
        out["security"] = [{"bearer": []}]
        out["description"] = f"Needs a token with the `{op.scope}` scope."
    return out


def _errors(op: Operation, auth: bool) -> dict[str, Any]:
    # With tokens, a scoped route may also answer 429: too many bad tokens from this client.
    codes = {*([401, 403, 429] if auth and op.scope is not None else []), *op.errors}
    out: dict[str, Any] = {}
    for code in sorted(codes):
        out[str(code)] = {"description": _STATUS_TEXT[code], "content": _json("ErrorBody")}
        if code in (429, 503):
            out[str(code)]["headers"] = {
                "Retry-After": {"schema": {"type": "string"}, "description": "Seconds"}
            }
    return out


def _paths(body: dict[str, Any], *, auth: bool, limits: Limits) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in ROUTES:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, body, auth, limits)
    return paths
