"""examples/fastapi end to end with a real worker process: a route ``aenqueue``s and waits for
the result with a timeout (202 when it runs out), answers 503 when the queue is full, and
offload's API and dashboard answer under the mounted prefix."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import httpx
import pytest

from tests.procs import start_worker, stop


@pytest.fixture
def example(sqlite_url: str) -> Iterator[ModuleType]:
    from examples.fastapi import app as example

    jobs = example.jobs
    url, limits = jobs.url, dict(jobs.queue_limits)
    jobs.use_url(sqlite_url)
    jobs.queue_limits["default"] = 2
    yield example
    jobs.close_sync()
    jobs.use_url(url)
    jobs.queue_limits.update(limits)


async def test_enqueue_wait_and_queue_full(example: ModuleType, sqlite_url: str) -> None:
    api = example.api
    transport = httpx.ASGITransport(app=api, client=("127.0.0.1", 40000))
    client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
    async with api.router.lifespan_context(api), client:
        params: dict[str, str | float] = {"image": "cat.jpg", "width": 64, "wait": 0.05}
        too_long = await client.post("/thumbnails", params={**params, "wait": 3600})
        assert too_long.status_code == 422  # a request holds its connection 30 s at most
        first = await client.post("/thumbnails", params=params)  # no worker yet: 202
        assert first.status_code == 202 and first.json()["state"] == "queued"
        assert (await client.post("/thumbnails", params=params)).status_code == 202
        full = await client.post("/thumbnails", params=params)
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        job_id = first.json()["id"]
        assert (await client.get(f"/thumbnails/{job_id}")).json()["done"] is False
        mounted = await client.get(f"/offload/v1/jobs/{job_id}")
        assert mounted.status_code == 200 and mounted.json()["state"] == "queued"
        assert (await client.get("/offload/")).status_code == 200  # the dashboard

        worker = start_worker(sqlite_url, app="examples.fastapi.app:jobs")
        try:
            job = await example.jobs.aget_job(job_id)
            assert await job.aresult(timeout=30) == "cat-64px.png"
            params["wait"] = 30
            done = await client.post("/thumbnails", params=params)
            assert done.status_code == 200 and done.json()["thumbnail"] == "cat-64px.png"
            assert (await client.get(f"/thumbnails/{job_id}")).json()["done"] is True
        finally:
            assert stop(worker) == 0
