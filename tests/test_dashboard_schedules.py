"""The dashboard's Schedules page: what it shows, escaping, and pause/resume (admins only)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import offload
from offload.server import create_service

ADMIN, READER = "admin-token-0123456789", "reader-token-0123456789"
NAME = "<script>nightly"  # task names may hold '<' and '>' (qualnames of <locals>)


async def browser(app: offload.App, token: str) -> httpx.AsyncClient:
    service = create_service(app, tokens={ADMIN: ["admin"], READER: ["read"]})
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service), base_url="http://localhost"
    )
    csrf = await csrf_of(client, "/login")
    r = await client.post("/login", data={"token": token, "csrf": csrf})
    assert r.status_code == 303
    return client


async def csrf_of(client: httpx.AsyncClient, path: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', (await client.get(path)).text)
    assert found
    return found.group(1)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[offload.App]:
    app = offload.App(f"sqlite:///{tmp_path / 'jobs.db'}")

    @app.task(name=NAME, schedule=offload.Every(minutes=5))
    def nightly() -> None: ...

    yield app
    await app.close()


async def test_page_lists_schedules_escaped_and_pauses(app: offload.App) -> None:
    client = await browser(app, ADMIN)
    async with contextlib.aclosing(client):
        page = await client.get("/schedules")
        assert page.status_code == 200
        assert "every 300s" in page.text and "&lt;script&gt;nightly" in page.text
        assert NAME not in page.text and ">Pause<" in page.text
        csrf = await csrf_of(client, "/schedules")
        r = await client.post("/schedules/pause", data={"name": NAME, "paused": "1", "csrf": csrf})
        assert r.status_code == 303 and r.headers["location"] == "/schedules?msg=schedule_paused"
        assert (await app.call(lambda b: b.schedule_records()))[NAME].paused
        page = await client.get("/schedules?msg=schedule_paused")
        assert "The schedule is paused" in page.text and ">Resume<" in page.text
        r = await client.post(
            "/schedules/pause", data={"name": "nope", "paused": "0", "csrf": csrf}
        )
        assert r.status_code == 400


async def test_a_reader_sees_no_buttons_and_cannot_pause(app: offload.App) -> None:
    client = await browser(app, READER)
    async with contextlib.aclosing(client):
        page = await client.get("/schedules")
        assert page.status_code == 200 and ">Pause<" not in page.text
        csrf = await csrf_of(client, "/schedules")
        r = await client.post("/schedules/pause", data={"name": NAME, "paused": "1", "csrf": csrf})
        assert r.status_code == 403
        assert await app.call(lambda b: b.schedule_records()) == {}
