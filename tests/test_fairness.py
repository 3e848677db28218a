"""Fair claims across keys (``@app.task(fair_key=...)``): the declaration (typed errors), the
key a job carries, the refusal of a backend that cannot rotate claims, and a real worker on
every engine with a store. The engines' contract is the conformance suite's
FairnessConformance."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import offload
from offload.backends.base import Capabilities
from offload.backends.memory import MemoryBackend
from offload.errors import CapabilityUnavailable, ConfigurationError, ValidationError
from offload.worker import Worker, WorkerConfig
from tests.services import backend_url


def test_fair_key_is_checked_at_declaration_and_carried_first() -> None:
    app = offload.App("memory://")
    with pytest.raises(ConfigurationError, match="not one of its arguments"):
        app.task(name="bad", fair_key="tenant")(lambda account: None)
    app.limit_queue("mail", max_running=5)

    @app.task(name="send", queue="mail", fair_key="tenant", concurrency_key="account")
    def send(tenant: str, account: int) -> None: ...

    job = send.prepare("acme", 42)
    assert job.limits == (
        'fair:tenant="acme"',  # first: the SQL engines index it there
        "1/0/task:key:send:account=42",
        "5/0/queue:running:mail",
    )
    assert send.options(queue="other").prepare("zeta", 1).limits[0] == 'fair:tenant="zeta"'


async def test_a_missing_fair_key_is_refused_and_nothing_stored() -> None:
    app = offload.App("memory://")

    @app.task(name="report", fair_key="tenant")
    def report(tenant: str | None = None) -> None: ...

    with pytest.raises(ValidationError, match="'tenant' is the fair key") as err:
        await report.aenqueue()
    assert err.value.argument == "tenant"
    assert await app.backend.counts() == {}


async def test_a_backend_without_fairness_refuses_fair_jobs() -> None:
    class NoFairness(MemoryBackend):
        capabilities = Capabilities(notify=True, cross_process=False, limits=True)

    app = offload.App(backend=NoFairness())

    @app.task(name="report", fair_key="tenant")
    def report(tenant: str) -> None: ...

    with pytest.raises(CapabilityUnavailable, match="cannot rotate claims among fair keys"):
        await report.aenqueue("acme")
    with pytest.raises(CapabilityUnavailable, match="cannot rotate claims"):
        report.prepare("acme")
    assert await app.backend.counts() == {}


@pytest.mark.parametrize("engine", ["memory", "sqlite", "postgres", "redis"])
async def test_a_worker_starts_the_small_tenant_within_one_round(
    engine: str, tmp_path: Path
) -> None:
    if engine == "memory":
        await _small_tenant_first("memory://", tmp_path)
        return
    with backend_url(engine, tmp_path) as url:
        await _small_tenant_first(url, tmp_path)


async def _small_tenant_first(url: str, tmp_path: Path) -> None:
    app = offload.App(url)
    started: list[str] = []

    @app.task(name=f"fair_report_{tmp_path.name}", fair_key="tenant")
    async def report(tenant: str, n: int) -> None:
        started.append(tenant)

    async with app:
        await app.aenqueue_many([report.prepare("big", n) for n in range(500)])
        await app.aenqueue_many([report.prepare("small", n) for n in range(5)])
        await Worker(app, WorkerConfig(concurrency=10, burst=True)).run()
    assert len(started) == 505
    # The small tenant's five all start among the first two claim rounds of ten, not after
    # the big tenant's 500 (plain FIFO would put them last).
    assert max(i for i, t in enumerate(started) if t == "small") < 20, started[:30]


async def test_a_damaged_fair_key_on_sqlite_blocks_nothing(tmp_path: Path) -> None:
    from offload.backends.sqlite import SQLiteBackend
    from offload.job import ClaimRequest, JobState
    from offload.testing.conformance.fairness import fair

    path = tmp_path / "jobs.db"
    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.open()
    try:
        jobs = await backend.enqueue([fair("A"), fair("A"), fair("B")])
        raw = sqlite3.connect(path)
        raw.execute("UPDATE offload_jobs SET limits = '[\"fair:broken' WHERE id = ?", (jobs[0].id,))
        raw.commit()
        raw.close()
        got = await backend.claim(ClaimRequest(queues=("default",), limit=10, worker_id="w"))
        assert {j.id for j in got} == {jobs[1].id, jobs[2].id}  # the others go
    finally:
        await backend.close()
    raw = sqlite3.connect(path)
    (state,) = raw.execute("SELECT state FROM offload_jobs WHERE id = ?", (jobs[0].id,)).fetchone()
    raw.close()
    assert state == JobState.DEAD.value  # put to dead with its reason, as any damaged record
