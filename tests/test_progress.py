"""``ctx.progress(...)``: coalesced in the worker (never a write per call), written before the
outcome, and shown by ``GET /v1/jobs/{id}``, the dashboard's job page and ``offload jobs show``
while the job runs."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

import offload
from offload.backends.base import Backend
from offload.backends.memory import MemoryBackend
from offload.backends.sqlite import SQLiteBackend
from offload.cli.output import job_json
from offload.context import encode_progress
from offload.job import Lease
from offload.server import create_service
from offload.worker import Worker, WorkerConfig


class Counting:
    """Mixin: counts set_progress calls and signals each one (tests wait on it, not on time)."""

    calls: list[list[tuple[Lease, bytes]]]
    wrote: asyncio.Event

    async def set_progress(self, updates: Sequence[tuple[Lease, bytes]]) -> set[str]:
        written: set[str] = await super().set_progress(updates)  # type: ignore[misc]
        self.calls.append(list(updates))
        self.wrote.set()
        return written


class CountingMemory(Counting, MemoryBackend):
    pass


class CountingSQLite(Counting, SQLiteBackend):
    pass


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    b: Counting = (
        CountingMemory()
        if request.param == "memory"
        else CountingSQLite(f"sqlite:///{tmp_path / 'jobs.db'}")
    )
    b.calls, b.wrote = [], asyncio.Event()
    assert isinstance(b, Backend)
    return b


def calls_of(backend: Backend) -> list[list[tuple[Lease, bytes]]]:
    assert isinstance(backend, Counting)
    return backend.calls


async def test_progress_is_seen_over_http_while_the_job_runs(backend: Backend) -> None:
    app = offload.App(backend=backend)
    release = threading.Event()

    @app.task(name="long", expose=True)
    def long_job(n: int) -> int:
        ctx = offload.current_job()
        ctx.progress(0.5, note="half way")
        release.wait(10)
        ctx.progress(1.0, note="done")
        return n

    service = create_service(app, workers=1)
    async with service.router.lifespan_context(service):
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            r = await client.post("/v1/jobs", json={"task": "long", "args": {"n": 3}})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            assert isinstance(backend, Counting)
            await asyncio.wait_for(backend.wrote.wait(), 5)
            running = (await client.get(f"/v1/jobs/{job_id}")).json()
            assert running["state"] == "running"
            assert running["progress"] == {"value": 0.5, "note": "half way"}
            page = (await client.get(f"/jobs/{job_id}")).text
            assert '<progress value="0.5" max="1">' in page and "half way" in page
            shown = job_json((await app.aget_job(job_id)).record)
            assert shown["progress"] == {"value": 0.5, "note": "half way"}
            release.set()
            done = await (await app.aget_job(job_id)).aresult(timeout=5)
            assert done == 3
            final = (await client.get(f"/v1/jobs/{job_id}")).json()
            assert (final["state"], final["progress"]) == (
                "succeeded",
                {"value": 1.0, "note": "done"},
            )


async def test_many_reports_are_coalesced_into_few_writes(backend: Backend) -> None:
    app = offload.App(backend=backend)
    reports = 2000

    @app.task(name="chatty")
    async def chatty() -> None:
        ctx = offload.current_job()
        for i in range(1, reports + 1):
            ctx.progress(i / reports, note=f"{i} of {reports}")
            if i % 100 == 0:
                await asyncio.sleep(0)  # let the writer run: it must still not write per call

    @app.task(name="quiet")
    async def quiet() -> None:
        return None

    job = await chatty.aenqueue()
    silent = await quiet.aenqueue()
    await Worker(app, WorkerConfig(burst=True, poll_s=0.05)).run()
    record = (await job.arefresh()).record
    assert record.progress == encode_progress(1.0, note=f"{reports} of {reports}")
    assert (await silent.arefresh()).record.progress is None
    calls = calls_of(backend)
    # One write when the first report arrives, at most one per second after it, one at the end.
    assert 1 <= len(calls) <= 3, [len(c) for c in calls]
    assert all(lease.job_id == job.id for c in calls for lease, _ in c)
    await app.close()


@pytest.mark.parametrize(
    "value",
    [1.5, -0.1, float("nan"), True, object(), "x" * 5000],
)
def test_bad_progress_is_a_validation_error(value: Any) -> None:
    with pytest.raises(offload.ValidationError):
        encode_progress(value)
    with pytest.raises(offload.ValidationError):
        encode_progress(0.5, note="n" * 501)


def test_small_json_values_are_progress_too() -> None:
    assert encode_progress({"rows": 1200, "of": 5000}) == b'{"value":{"rows":1200,"of":5000}}'
    assert encode_progress(0, note="starting") == b'{"value":0,"note":"starting"}'


async def test_a_backend_without_progress_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class NoProgress(MemoryBackend):
        capabilities = dataclasses.replace(MemoryBackend.capabilities, progress=False)

    app = offload.App(backend=NoProgress())

    @app.task(name="chatty")
    def chatty() -> None:
        for i in range(100):
            offload.current_job().progress(i / 100)

    async with app:
        job = await chatty.aenqueue()
        with caplog.at_level(logging.WARNING, logger="offload.worker"):
            await Worker(app, WorkerConfig(burst=True, poll_s=0.05)).run()
        assert (await job.arefresh()).state is offload.JobState.SUCCEEDED
    dropped = [r for r in caplog.records if "progress reports are dropped" in r.getMessage()]
    assert len(dropped) == 1, caplog.text
