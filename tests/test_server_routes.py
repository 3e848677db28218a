"""The route table is the one source of the app's routes and of the OpenAPI paths."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Route

import offload
from offload.server import create_service
from offload.server.routes import ROUTES


def _app() -> offload.App:
    app = offload.App("memory://")

    @app.task(name="add", expose=True)
    def add(a: int) -> int:
        return a

    return app


def _served(service: Any, prefix: str = "") -> set[tuple[str, str]]:
    out = set()
    for route in service.routes:
        assert isinstance(route, Route)
        if route.path.startswith(prefix):
            out |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return out


def _documented(doc: dict[str, Any], prefix: str = "") -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        if path.startswith(prefix)
        for method in ops
    }


@pytest.mark.parametrize("tokens", [None, {"a" * 16: ["admin"]}])
def test_the_app_serves_exactly_the_documented_routes(tokens: Any) -> None:
    service = create_service(_app(), tokens=tokens, dashboard=False)
    doc = service.state.offload.openapi()
    assert _served(service) == _documented(doc) == {(op.method, op.path) for op in ROUTES}
    with_dashboard = create_service(_app(), tokens=tokens)
    assert _served(with_dashboard, "/v1/") == _documented(doc, "/v1/")
    assert len(_documented(doc, "/v1/")) == 13


def test_each_documented_operation_names_its_scope_when_tokens_are_on() -> None:
    service = create_service(_app(), tokens={"a" * 16: ["admin"]}, dashboard=False)
    doc = service.state.offload.openapi()
    for op in ROUTES:
        documented = doc["paths"][op.path][op.method.lower()]
        assert ("security" in documented) == (op.scope is not None), op.path
        assert ("401" in documented["responses"]) == (op.scope is not None), op.path
