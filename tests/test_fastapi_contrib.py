"""offload.contrib.fastapi: the lifespan runs the mounted service's embedded worker and the
user's own lifespan, and closes the App; the dependency can be overridden in tests."""

# No "from __future__ import annotations": FastAPI reads the route's annotations at runtime,
# and they name a local (the integration made inside the test).

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI

import offload
from offload.contrib.fastapi import Offload


async def test_lifespan_mount_and_dependency() -> None:
    jobs = offload.App("memory://")

    @jobs.task
    async def double(n: int) -> int:
        return 2 * n

    integration = Offload(jobs)
    events: list[str] = []

    @asynccontextmanager
    async def mine(_: Any) -> AsyncIterator[None]:
        events.append("up")
        yield
        events.append("down")

    api = FastAPI(lifespan=lambda web: integration.lifespan(web, then=mine))
    integration.mount(api, "/jobs", workers=2)  # an embedded worker, run by our lifespan

    @api.post("/double/{n}")
    async def route(n: int, app: Annotated[offload.App, Depends(integration.dependency)]) -> int:
        assert app is jobs
        job = await double.aenqueue(n)
        result: int = await job.aresult(timeout=5)
        return result

    transport = httpx.ASGITransport(app=api, client=("127.0.0.1", 40000))
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        assert events == ["up"]
        assert (await client.post("/double/21")).json() == 42  # the embedded worker ran it
        health = await client.get("/jobs/v1/queues")
        assert health.status_code == 200
    assert events == ["up", "down"]
    assert not integration.services[0].state.offload.workers  # drained and gone
