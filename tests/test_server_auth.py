"""Bearer tokens and scopes; the loopback-only mode of a service without tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

import offload
from offload.errors import ConfigurationError
from offload.server import create_service, is_loopback, parse_tokens

READER = "r" * 20
PRODUCER = "p" * 20
ADMIN = "a" * 20


def _app() -> offload.App:
    app = offload.App("memory://")

    @app.task(name="add", expose=True)
    def add(a: int) -> int:
        return a

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    tokens = {READER: ["read"], PRODUCER: ["enqueue"], ADMIN: ["admin"]}
    service = create_service(_app(), tokens=tokens)
    # A remote client: with tokens configured, where the client is does not matter.
    transport = httpx.ASGITransport(app=service, client=("203.0.113.9", 4000))
    async with service.router.lifespan_context(service):
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_scopes(client: httpx.AsyncClient) -> None:
    body = {"task": "add", "args": {"a": 1}}
    r = await client.post("/v1/jobs", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["code"] == "unauthorized"
    r = await client.post("/v1/jobs", json=body, headers=bearer("x" * 20))
    assert r.status_code == 401
    r = await client.post("/v1/jobs", json=body, headers={"Authorization": f"Basic {PRODUCER}"})
    assert r.status_code == 401
    r = await client.post("/v1/jobs", json=body, headers=bearer(READER))
    assert r.status_code == 403 and 'scope="enqueue"' in r.headers["www-authenticate"]
    r = await client.post("/v1/jobs", json=body, headers=bearer(PRODUCER))
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert (await client.get(f"/v1/jobs/{job_id}", headers=bearer(PRODUCER))).status_code == 403
    for path in (f"/v1/jobs/{job_id}", "/v1/jobs", "/v1/queues", "/v1/workers", "/metrics"):
        assert (await client.get(path)).status_code == 401, path
        assert (await client.get(path, headers=bearer(READER))).status_code == 200, path
        assert (await client.get(path, headers=bearer(ADMIN))).status_code == 200, path
    cancel = f"/v1/jobs/{job_id}/cancel"
    assert (await client.post(cancel, headers=bearer(READER))).status_code == 403
    assert (await client.post(cancel, headers=bearer(ADMIN))).status_code == 200
    assert (await client.post(f"/v1/jobs/{job_id}/retry", headers=bearer(ADMIN))).status_code == 200
    assert (await client.post("/v1/jobs", json=body, headers=bearer(ADMIN))).status_code == 202


async def test_public_routes_need_no_token(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await client.get(path)).status_code == 200, path
    doc = (await client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/jobs"]["post"]["security"] == [{"bearer": []}]
    assert "401" in doc["paths"]["/v1/jobs"]["post"]["responses"]


async def test_without_tokens_only_loopback_clients_are_served() -> None:
    service = create_service(_app())
    async with service.router.lifespan_context(service):
        for host, status in (("127.0.0.1", 200), ("::1", 200), ("192.0.2.1", 403)):
            transport = httpx.ASGITransport(app=service, client=(host, 4000))
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                r = await c.get("/v1/queues")
                assert r.status_code == status, host
                if status == 403:
                    assert "loopback" in r.json()["error"]["message"]
    open_service = create_service(_app(), insecure=True)
    transport = httpx.ASGITransport(app=open_service, client=("192.0.2.1", 4000))
    async with open_service.router.lifespan_context(open_service):
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            assert (await c.get("/v1/queues")).status_code == 200


def test_token_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="16 characters"):
        create_service(_app(), tokens={"short": ["read"]})
    with pytest.raises(ConfigurationError, match="scopes"):
        create_service(_app(), tokens={"t" * 20: ["write"]})
    with pytest.raises(ConfigurationError, match="list"):
        create_service(_app(), tokens={"t" * 20: "read"})


def test_parse_tokens_and_loopback() -> None:
    assert parse_tokens("abc==:x=read,enqueue; other=admin;") == {
        "abc==:x": ["read", "enqueue"],
        "other": ["admin"],
    }
    with pytest.raises(ConfigurationError):
        parse_tokens("no-scopes-here")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
