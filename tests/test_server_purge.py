"""Purging finished jobs over HTTP: ``POST /v1/jobs/purge`` (admin scope) and the dashboard's
purge form (admin, CSRF-checked), on the memory and SQLite backends; the store-less broker
answers 501."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import offload
from offload.backends.base import Backend
from offload.job import JobRecord
from offload.outcome import Cancelled, Dead, Outcome, Succeeded
from offload.server import create_service
from offload.testing.helpers import finish, new_job
from tests.services import (
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    RABBITMQ_URL,
    delete_rabbitmq_prefix,
    require_port,
    unique_name,
)

ADMIN = "admin-token-0123456789"
READER = "reader-token-0123456789"
TOKENS = {ADMIN: ["admin"], READER: ["read"]}


@pytest.fixture(params=["memory", "sqlite"])
async def service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Backend]]:
    """A client of a service with tokens, and the service's backend (to set jobs up)."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"
    app = offload.App(url)
    svc = create_service(app, tokens=TOKENS)
    lifespan = svc.router.lifespan_context(svc)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=svc), base_url="http://localhost")
    try:
        yield client, app.backend
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def finished(backend: Backend, outcome: Outcome, queue: str = "default") -> JobRecord:
    return await finish(backend, outcome, new_job(queue=queue))


async def test_purge_deletes_dead_jobs_by_default(
    service: tuple[httpx.AsyncClient, Backend],
) -> None:
    client, backend = service
    dead = await finished(backend, Dead("x"))
    ok = await finished(backend, Succeeded())
    r = await client.post("/v1/jobs/purge", headers=auth(ADMIN))
    assert (r.status_code, r.json()) == (200, {"deleted": 1})
    assert await backend.get(dead.id) is None
    assert await backend.get(ok.id) is not None


async def test_purge_by_state_queue_and_age(service: tuple[httpx.AsyncClient, Backend]) -> None:
    client, backend = service
    old = await finished(backend, Cancelled("c"), "mail")
    await asyncio.sleep(0.5)  # the age between the two finishes is the point
    young = await finished(backend, Cancelled("c"), "mail")
    other_queue = await finished(backend, Succeeded(), "sms")
    mail_ok = await finished(backend, Succeeded(), "mail")
    params: Any = [("state", "cancelled"), ("state", "succeeded"), ("queue", "mail")]
    r = await client.post(
        "/v1/jobs/purge", params=[*params, ("older_than", "0.25s")], headers=auth(ADMIN)
    )
    assert r.json() == {"deleted": 1}
    assert await backend.get(old.id) is None and await backend.get(young.id) is not None
    r = await client.post("/v1/jobs/purge", params=params, headers=auth(ADMIN))
    assert r.json() == {"deleted": 2}  # young and mail_ok
    assert await backend.get(mail_ok.id) is None
    assert await backend.get(other_queue.id) is not None


@pytest.mark.parametrize(
    ("params", "argument"),
    [
        ({"state": "running"}, "state"),
        ({"state": "finished"}, "state"),
        ({"older_than": "soon"}, "older_than"),
        ({"older_than": "-1"}, "older_than"),
        ({"older_than": ""}, "older_than"),
        ({"older_than": "7 d"}, "older_than"),
    ],
)
async def test_bad_parameters_are_422_and_delete_nothing(
    service: tuple[httpx.AsyncClient, Backend], params: dict[str, str], argument: str
) -> None:
    client, backend = service
    dead = await finished(backend, Dead("x"))
    r = await client.post("/v1/jobs/purge", params=params, headers=auth(ADMIN))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["argument"] == argument
    assert await backend.get(dead.id) is not None


async def test_purge_needs_the_admin_scope(service: tuple[httpx.AsyncClient, Backend]) -> None:
    client, backend = service
    dead = await finished(backend, Dead("x"))
    assert (await client.post("/v1/jobs/purge")).status_code == 401
    assert (await client.post("/v1/jobs/purge", headers=auth(READER))).status_code == 403
    assert await backend.get(dead.id) is not None


# -- the dashboard ----------------------------------------------------------------------------


async def csrf_of(client: httpx.AsyncClient, path: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', (await client.get(path)).text)
    assert found
    return found.group(1)


async def test_dashboard_purge_form_is_csrf_checked_and_purges(
    service: tuple[httpx.AsyncClient, Backend],
) -> None:
    client, backend = service
    r = await client.post("/login", data={"token": ADMIN, "csrf": await csrf_of(client, "/login")})
    assert r.status_code == 303
    dead, ok = await finished(backend, Dead("x"), "mail"), await finished(backend, Succeeded())
    page = await client.get("/queues")
    assert 'action="/queues/purge"' in page.text
    form = {"state": "dead", "queue": "mail", "older_than": "0"}
    assert (await client.post("/queues/purge", data=form)).status_code == 403  # no CSRF token
    assert await backend.get(dead.id) is not None
    bad = {**form, "older_than": "later", "csrf": await csrf_of(client, "/queues")}
    assert (await client.post("/queues/purge", data=bad)).status_code == 422
    r = await client.post("/queues/purge", data={**form, "csrf": await csrf_of(client, "/queues")})
    assert (r.status_code, r.headers["location"]) == (303, "/queues?msg=purged")
    assert await backend.get(dead.id) is None
    assert await backend.get(ok.id) is not None


async def test_dashboard_purge_needs_the_admin_scope(
    service: tuple[httpx.AsyncClient, Backend],
) -> None:
    client, backend = service
    await client.post("/login", data={"token": READER, "csrf": await csrf_of(client, "/login")})
    page = await client.get("/queues")
    assert page.status_code == 200 and "/queues/purge" not in page.text
    dead = await finished(backend, Dead("x"))
    data = {"state": "dead", "csrf": await csrf_of(client, "/queues")}
    assert (await client.post("/queues/purge", data=data)).status_code == 403
    assert await backend.get(dead.id) is not None


@pytest.fixture
def rabbit_prefix() -> Iterator[str]:
    require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    prefix = unique_name("offload_t")
    yield prefix
    delete_rabbitmq_prefix(prefix)


async def test_the_store_less_broker_answers_501(rabbit_prefix: str) -> None:
    app = offload.App(f"{RABBITMQ_URL}?prefix={rabbit_prefix}")
    svc = create_service(app, tokens=TOKENS)
    lifespan = svc.router.lifespan_context(svc)
    await lifespan.__aenter__()
    transport = httpx.ASGITransport(app=svc)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            r = await client.post("/v1/jobs/purge", headers=auth(ADMIN))
    finally:
        await lifespan.__aexit__(None, None, None)
    assert r.status_code == 501
    assert "store=" in r.json()["error"]["message"]
