"""``/v1/schedules`` (list, pause, resume) and the enqueue outcome header."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import offload
from offload.server import create_service


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = offload.App(f"sqlite:///{tmp_path / 'jobs.db'}")

    @app.task(name="report", expose=True, schedule=offload.Cron("0 6 * * 1", tz="Europe/Paris"))
    def report(n: int = 0) -> None: ...

    service = create_service(app)
    async with service.router.lifespan_context(service):
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


async def test_list_pause_resume(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/schedules")
    assert r.status_code == 200
    (row,) = r.json()["schedules"]
    assert row["name"] == "report" and row["schedule"] == "cron 0 6 * * 1 (Europe/Paris)"
    assert row["paused"] is False and row["next_run_at"].endswith("Z")
    r = await client.post("/v1/schedules/report/pause", headers={"Origin": "http://localhost"})
    assert r.status_code == 200 and r.json()["paused"] is True and r.json()["next_run_at"] is None
    r = await client.post("/v1/schedules/report/resume", headers={"Origin": "http://localhost"})
    assert r.json()["paused"] is False
    r = await client.post("/v1/schedules/nope/pause", headers={"Origin": "http://localhost"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "schedule_not_found"


async def test_enqueue_says_when_the_key_was_held(client: httpx.AsyncClient) -> None:
    body = {"task": "report", "key": "k", "delay": 60}
    first = await client.post("/v1/jobs", json=body)
    assert first.status_code == 202 and "Offload-Enqueue-Outcome" not in first.headers
    again = await client.post("/v1/jobs", json=body)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Offload-Enqueue-Outcome"] == "existing"
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_enqueue_with_a_window_and_replace(client: httpx.AsyncClient) -> None:
    body = {"task": "report", "key": "w", "unique_for": 3600, "args": {"n": 1}, "delay": 60}
    first = await client.post("/v1/jobs", json=body)
    assert first.status_code == 202
    moved = await client.post("/v1/jobs", json={**body, "args": {"n": 2}, "on_conflict": "replace"})
    assert moved.json()["id"] == first.json()["id"] and moved.json()["args"] == {"n": 2}
    assert moved.headers["Offload-Enqueue-Outcome"] == "replaced"
    assert "Idempotent-Replayed" not in moved.headers
    for bad in ({"unique_for": 5}, {"on_conflict": "replace"}, {"key": "k", "unique_for": -1}):
        r = await client.post("/v1/jobs", json={"task": "report", **bad})
        assert r.status_code == 422, bad
    # The body's own key: an Idempotency-Key does not stand in for it.
    r = await client.post(
        "/v1/jobs", json={"task": "report", "unique_for": 5}, headers={"Idempotency-Key": "i1"}
    )
    assert r.status_code == 422 and r.json()["error"]["argument"] == "unique_for"
