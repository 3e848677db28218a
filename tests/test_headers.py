"""Job headers above the seam: set with ``task.options(headers=...)`` or by a hook's
``before_enqueue``, bounded, and seen by the task as ``current_job().headers``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

import offload
from offload.headers import MAX_HEADERS, MAX_TOTAL_CHARS, MAX_VALUE_CHARS, check_headers
from offload.hooks import Hook
from offload.job import NewJob
from offload.server import create_service
from offload.worker import Worker, WorkerConfig


class Stamp(Hook):
    def __init__(self, **headers: str) -> None:
        self.headers = headers

    def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
        for job in jobs:
            job.headers.update(self.headers)


@pytest.mark.parametrize(
    "bad",
    [
        {"": "v"},
        {"has space": "v"},
        {"new\n": "v"},
        {"x" * 65: "v"},
        {"k": "v" * (MAX_VALUE_CHARS + 1)},
        {"k": 1},
        {f"k{i}": "v" for i in range(MAX_HEADERS + 1)},
        {f"k{i}": "v" * 1000 for i in range(MAX_TOTAL_CHARS // 1000 + 1)},
        [("k", "v")],
    ],
)
def test_bad_headers_are_refused(bad: Any) -> None:
    with pytest.raises(offload.ValidationError):
        check_headers(bad)
    app = offload.App("memory://")

    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(offload.ValidationError):
        t.options(headers=bad)


async def test_headers_from_options_and_hooks_reach_the_task() -> None:
    app = offload.App("memory://")
    app.add_hook(Stamp(tenant="acme"))
    seen: list[dict[str, str]] = []

    @app.task(name="sync_task")
    def sync_task() -> None:
        seen.append(offload.current_job().headers)

    @app.task(name="async_task")
    async def async_task() -> None:
        seen.append(offload.current_job().headers)

    async with app:
        one = await sync_task.options(headers={"request-id": "r1"}).aenqueue()
        two = await async_task.aenqueue()
        assert one.record.headers == {"request-id": "r1", "tenant": "acme"}
        await Worker(app, WorkerConfig(burst=True, poll_s=0.05)).run()
        assert (await one.arefresh()).state is offload.JobState.SUCCEEDED
        assert (await two.arefresh()).record.headers == {"tenant": "acme"}
    assert sorted(seen, key=len) == [{"tenant": "acme"}, {"request-id": "r1", "tenant": "acme"}]


async def test_a_hook_that_overfills_the_headers_stores_nothing() -> None:
    app = offload.App("memory://")
    app.add_hook(Stamp(big="x" * MAX_VALUE_CHARS, more="y" * MAX_VALUE_CHARS))
    app.add_hook(Stamp(again="z" * MAX_VALUE_CHARS, last="w" * MAX_VALUE_CHARS))

    @app.task(name="t")
    def t() -> None: ...

    async with app:
        with pytest.raises(offload.ValidationError, match="headers hold"):
            await t.aenqueue()
        assert await app.call(lambda b: b.counts()) == {}


async def test_headers_over_http(tmp_path: Path) -> None:
    app = offload.App(f"sqlite:///{tmp_path / 'jobs.db'}")

    @app.task(name="t", expose=True)
    def t() -> None: ...

    service = create_service(app)
    async with service.router.lifespan_context(service):
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            r = await client.post("/v1/jobs", json={"task": "t", "headers": {"request-id": "r1"}})
            assert r.status_code == 202 and r.json()["headers"] == {"request-id": "r1"}
            got = await client.get(f"/v1/jobs/{r.json()['id']}")
            assert got.json()["headers"] == {"request-id": "r1"}
            for bad in ({"bad name": "v"}, {"k": "v" * (MAX_VALUE_CHARS + 1)}, {"k": 1}):
                r = await client.post("/v1/jobs", json={"task": "t", "headers": bad})
                assert r.status_code in (400, 422), r.text
            assert len((await client.get("/v1/jobs")).json()["jobs"]) == 1


async def test_a_hand_made_job_with_bad_headers_is_refused() -> None:
    app = offload.App("memory://")
    bad = NewJob(id="j1", task="t", queue="default", args=b"{}", headers={"bad name": "v"})
    async with app:
        with pytest.raises(offload.ValidationError):
            await app.aenqueue_many([bad])
        assert await app.call(lambda b: b.counts()) == {}
