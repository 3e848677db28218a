"""The OpenAPI document describes the service truthfully: schemathesis generates requests from
``/openapi.json`` (valid and invalid ones) against a real uvicorn and checks that no answer is
a server error or breaks the document's schemas, status codes or headers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

import offload
from offload.server import create_service
from tests.test_server_uvicorn import serve_in_thread

# At least 200 generated cases per operation (the bar for CI), set here rather than
# from the environment so every run holds the same bar.
EXAMPLES_PER_OPERATION = 200


class Address(msgspec.Struct):
    street: str
    zip_code: str | None = None


def _app(url: str) -> offload.App:
    app = offload.App(url, queue_limits={"limited": 5})

    @app.task(name="add", expose=True)
    def add(a: int, b: int = 1) -> int:
        return a + b

    @app.task(name="mail", expose=True, queue="limited")
    async def mail(to: str, tags: list[str], address: Address | None = None) -> str:
        return to

    @app.task(name="internal")
    def internal() -> None: ...

    return app


def _service(url: str) -> Any:
    # A short wait cap keeps generated Prefer/wait values from stretching the run.
    return create_service(_app(url), workers=4, max_wait_s=0.2)


# The document does not depend on the backend, so it is read from a service built here; the
# requests go to another, built on a fresh SQLite file per run, served by uvicorn.
schema = schemathesis.openapi.from_dict(_service("memory://").state.offload.openapi())


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db: Path = tmp_path_factory.mktemp("openapi") / "jobs.db"
    with serve_in_thread(_service(f"sqlite:///{db}")) as url:
        yield url


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_matches_its_openapi_document(case: Any, live_url: str) -> None:
    if case.query and "cursor" in case.query:
        # A cursor is opaque: only one the server handed out is valid, which no schema can
        # say. Invalid ones (422) are covered in test_server_api.
        del case.query["cursor"]
    case.call_and_validate(base_url=live_url, timeout=10)


def test_document_has_each_exposed_tasks_signature(tmp_path: Path) -> None:
    app = _app(f"sqlite:///{tmp_path / 'jobs.db'}")
    service = create_service(app)
    doc = service.state.offload.openapi()
    assert doc["openapi"] == "3.1.0"
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    variants = {v["properties"]["task"]["const"]: v for v in body["schema"]["oneOf"]}
    assert set(variants) == {"add", "mail"}  # "internal" is not exposed
    add_args = doc["components"]["schemas"][variants["add"]["properties"]["args"]["$ref"][21:]]
    assert add_args["properties"]["a"] == {"type": "integer"}
    assert add_args["required"] == ["a"]
    assert "Address" in doc["components"]["schemas"]
    assert "security" not in doc["paths"]["/v1/jobs"]["post"]  # no tokens configured
