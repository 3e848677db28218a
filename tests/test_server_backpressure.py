"""Queue depth limits over HTTP (429 + Retry-After, exactly the allowed number stored) and the
group commit that gathers concurrent enqueues into few backend calls."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

import offload
from offload.job import JobState
from offload.server import create_service
from offload.server.batcher import EnqueueBatcher

LIMIT = 25


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"


def _app(url: str) -> offload.App:
    app = offload.App(url, queue_limits={"small": LIMIT})

    @app.task(name="work", expose=True, queue="small")
    def work(n: int) -> int:
        return n

    @app.task(name="other", expose=True, queue="roomy")
    def other(n: int) -> int:
        return n

    return app


async def _flood(service: Any, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await asyncio.gather(*(client.post("/v1/jobs", json=b) for b in bodies))


def _batches(metrics_text: str) -> tuple[float, float]:
    """(backend enqueue calls, jobs in them) from the group-commit histogram."""
    calls = re.search(r"^offload_http_enqueue_batch_jobs_count (\S+)$", metrics_text, re.M)
    jobs = re.search(r"^offload_http_enqueue_batch_jobs_sum (\S+)$", metrics_text, re.M)
    assert calls and jobs
    return float(calls.group(1)), float(jobs.group(1))


async def test_flood_past_the_limit_stores_exactly_the_limit(url: str) -> None:
    app = _app(url)
    service = create_service(app)
    async with service.router.lifespan_context(service):
        bodies = [{"task": "work", "args": {"n": i}} for i in range(4 * LIMIT)]
        # Other queues are not held back by the full one, even in the same batches.
        bodies += [{"task": "other", "args": {"n": i}} for i in range(20)]
        responses = await _flood(service, bodies)
        by_status = Counter((r.json().get("queue") or "x", r.status_code) for r in responses)
        statuses = Counter(r.status_code for r in responses[: 4 * LIMIT])
        assert statuses == {202: LIMIT, 429: 3 * LIMIT}
        assert by_status[("roomy", 202)] == 20
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        counts = await app.call(lambda b: b.counts())
        assert counts["small"][JobState.QUEUED] == LIMIT
        assert counts["roomy"][JobState.QUEUED] == 20


async def test_concurrent_enqueues_share_backend_calls(url: str) -> None:
    service = create_service(_app(url))
    async with service.router.lifespan_context(service):
        responses = await _flood(service, [{"task": "other", "args": {"n": i}} for i in range(200)])
        assert {r.status_code for r in responses} == {202}
        assert len({r.json()["id"] for r in responses}) == 200
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            calls, jobs = _batches((await client.get("/metrics")).text)
        assert jobs == 200 and calls < 50  # grouped: far fewer writes than requests


async def test_without_group_commit_each_enqueue_is_one_call(url: str) -> None:
    service = create_service(_app(url), group_commit=False)
    async with service.router.lifespan_context(service):
        await _flood(service, [{"task": "other", "args": {"n": i}} for i in range(30)])
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert _batches((await client.get("/metrics")).text) == (30, 30)


async def test_batcher_keyed_jobs_dedup_even_when_the_queue_is_full(url: str) -> None:
    app = _app(url)
    async with app:
        batcher = EnqueueBatcher(app)
        work = app.tasks["work"]
        first = await batcher.enqueue(work.options(key="k").prepare(n=0))
        for i in range(LIMIT - 1):
            await batcher.enqueue(work.prepare(n=i))
        jobs = [work.prepare(n=1), work.options(key="k").prepare(n=0), work.prepare(n=2)]
        results = await asyncio.gather(*(batcher.enqueue(j) for j in jobs), return_exceptions=True)
        assert isinstance(results[0], offload.QueueFull)
        assert isinstance(results[2], offload.QueueFull)
        assert not isinstance(results[1], BaseException) and results[1].id == first.id
        await batcher.close()
