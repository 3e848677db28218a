"""Workflows as users meet them: building and validating the shape, running with a real
worker (memory and SQLite), the HTTP route, the dashboard page and the CLI. The engine
contract (advance atomic with the outcome) is in the conformance suite
(``offload.testing.conformance.workflows``), run on every backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import offload
from offload.job import ClaimRequest
from offload.server import create_service
from offload.worker.worker import Worker, WorkerConfig
from offload.workflow.canvas import build
from offload.workflow.record import Feed


def make_app(url: str) -> offload.App:
    app = offload.App(url)

    @app.task(name="add")
    def add(x: int, y: int = 0) -> int:
        return x + y

    @app.task(name="total")
    def total(xs: list[int]) -> int:
        return sum(xs)

    @app.task(name="boom", max_attempts=1)
    def boom(x: int) -> int:
        raise RuntimeError("boom")

    @app.task(name="hello")
    def hello() -> str:
        return "hello"

    return app


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'wf.db'}"


@pytest.fixture
async def app(url: str) -> AsyncIterator[offload.App]:
    a = make_app(url)
    async with a:
        yield a


async def drain(app: offload.App) -> None:
    await Worker(app, WorkerConfig(poll_s=0.05, burst=True)).run()


# -- shape and validation (no backend) -----------------------------------------------------


def test_flattening_nests_groups_in_chains() -> None:
    t = make_app("memory://").tasks
    add, total = t["add"], t["total"]
    rec = build(
        offload.chain(add.s(1), offload.group(add.s(2), add.s(3)).then(total.s()), add.s(4))
    )
    assert [(s.task, s.parents, s.feed, s.pipe) for s in rec.steps] == [
        ("add", (), Feed.NONE, None),
        ("add", (0,), Feed.ONE, "x"),
        ("add", (0,), Feed.ONE, "x"),
        ("total", (1, 2), Feed.ALL, "xs"),
        ("add", (3,), Feed.ONE, "x"),
    ]


def test_signatures_are_validated_at_enqueue() -> None:
    t = make_app("memory://").tasks
    add, hello = t["add"], t["hello"]
    with pytest.raises(offload.ValidationError, match="add"):
        build(offload.chain(add.s("one")))  # the first step gets every argument checked
    with pytest.raises(offload.ValidationError, match=r"add.*y"):
        build(offload.chain(add.s(1), add.s("two")))  # y is checked; x is the piped result
    with pytest.raises(offload.ValidationError, match="si"):
        build(offload.chain(add.s(1), hello.s()))  # nothing to receive the result with
    build(offload.chain(add.s(1), hello.si()))  # immutable: fine
    with pytest.raises(offload.ValidationError, match="at least one"):
        offload.chain()
    with pytest.raises(offload.ValidationError, match="signatures"):
        offload.group(add)  # type: ignore[arg-type]
    with pytest.raises(offload.ValidationError, match="queue, priority"):
        build(offload.chain(add.options(delay=5).s(1)))


# -- with a worker ---------------------------------------------------------------------------


async def test_a_chain_with_a_group_runs_to_its_result(app: offload.App) -> None:
    add, total = app.tasks["add"], app.tasks["total"]
    wf = await offload.chain(
        add.s(1, 2), offload.group(add.s(10), add.s(20)).then(total.s()), add.s(100)
    ).aenqueue()
    await drain(app)
    assert await wf.aresult(timeout=5) == (13 + 23) + 100
    view = await wf.aview()
    assert view.state == "succeeded" and all(s.state == "succeeded" for s in view.steps)


async def test_a_failed_step_fails_the_workflow_and_a_retry_resumes_it(
    app: offload.App,
) -> None:
    add, boom = app.tasks["add"], app.tasks["boom"]
    wf = await offload.chain(add.s(1), boom.s(), add.s(5)).aenqueue()
    await drain(app)
    with pytest.raises(offload.JobFailed, match="boom"):
        await wf.aresult(timeout=5)
    view = await wf.aview()
    assert [s.state for s in view.steps] == ["succeeded", "dead", "cancelled"]
    # Fix the task, retry the dead step: the workflow goes on from there.
    app.tasks["boom"].fn = lambda x: x * 2  # type: ignore[misc]
    dead = view.steps[1].job_id
    assert dead is not None
    await app.call(lambda b: b.requeue(dead))
    await drain(app)
    assert await wf.aresult(timeout=5) == 1 * 2 + 5


async def test_group_with_continue_on_failure_hands_the_failure_on(app: offload.App) -> None:
    add, boom = app.tasks["add"], app.tasks["boom"]
    shape = offload.group(add.s(1), boom.s(2), continue_on_failure=True).then(add.si(7))
    wf = await shape.aenqueue()
    await drain(app)
    assert await wf.aresult(timeout=5) == 7
    view = await wf.aview()
    assert view.state == "succeeded" and view.steps[1].state == "dead"


async def test_cancelling_a_workflow(app: offload.App) -> None:
    add = app.tasks["add"]
    wf = await offload.chain(add.s(1), add.s(2)).aenqueue()
    view = await wf.acancel()
    assert view.state == "cancelled" and [s.state for s in view.steps] == ["cancelled"] * 2
    await drain(app)
    with pytest.raises(offload.JobFailed, match="cancelled"):
        await wf.aresult(timeout=5)


async def test_a_limited_task_keeps_its_limits_as_a_workflow_step(url: str) -> None:
    # A step is a job of its task: the task's concurrency limit (and its queue's rules) hold
    # for it as for a plain enqueue, or a workflow would run past max_per_key.
    app = offload.App(url)

    @app.task(name="per_account", concurrency_key="account", max_per_key=1)
    def per_account(account: str, n: int = 0) -> int:
        return n

    @app.task(name="relay", concurrency_key="account", max_per_key=1)
    def relay(prev: int, account: str) -> int:
        return prev

    async with app:
        plain = per_account.prepare("a").limits
        assert plain
        shape = offload.group(per_account.si("a", 1), per_account.si("a", 2)).then(
            relay.s(account="a")
        )
        wf = await shape.aenqueue()
        req = ClaimRequest(queues=("default",), limit=2, worker_id="w")
        claimed = await app.backend.claim(req)
        assert len(claimed) == 1 and claimed[0].limits == plain
        assert wf.id
        with pytest.raises(offload.ValidationError, match="limit key"):
            await offload.chain(per_account.si("a"), per_account.s()).aenqueue()


async def test_a_steps_headers_reach_its_job(app: offload.App) -> None:
    add = app.tasks["add"]
    first = add.options(headers={"tenant": "t1"}).si(1)
    wf = await offload.chain(first, add.options(headers={"tenant": "t2"}).s()).aenqueue()
    await drain(app)
    assert await wf.aresult(timeout=5) == 1
    view = await wf.aview()
    jobs = [await app.aget_job(s.job_id or "") for s in view.steps]
    assert [j.record.headers for j in jobs] == [{"tenant": "t1"}, {"tenant": "t2"}]


# -- HTTP, dashboard, CLI ----------------------------------------------------------------------


async def test_http_route_and_dashboard_page(url: str) -> None:
    app = make_app(url)
    service = create_service(app, tokens=None)
    lifespan = service.router.lifespan_context(service)
    await lifespan.__aenter__()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service), base_url="http://localhost"
        ) as client:
            add = app.tasks["add"]
            wf = await offload.chain(add.s(1), add.s(2)).aenqueue()
            r = await client.get(f"/v1/workflows/{wf.id}")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["id"] == wf.id and body["state"] == "running"
            assert [s["state"] for s in body["steps"]] == ["queued", "pending"]
            missing = await client.get("/v1/workflows/nope")
            assert missing.status_code == 404 and "no workflow with id" in missing.text
            step = body["steps"][0]["job_id"]
            job_page = await client.get(f"/jobs/{step}")
            assert f'/workflows/{wf.id}"' in job_page.text  # reachable from any of its jobs
            page = await client.get(f"/workflows/{wf.id}")
            assert page.status_code == 200 and "<script>" not in page.text
            assert (await client.get("/workflows/%3Cscript%3E")).status_code == 404
            r = await client.post(f"/v1/workflows/{wf.id}/cancel")
            assert r.status_code == 200 and r.json()["state"] == "cancelled"
    finally:
        await lifespan.__aexit__(None, None, None)


def test_cli_workflows_show(tmp_path: Path) -> None:
    from tests.procs import run_cli

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    app = offload.App(url)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    wf = offload.chain(add.s(1, 2), add.s(3)).enqueue()
    app.close_sync()
    out = run_cli(url, "workflows", "show", wf.id, "--json")
    assert out.returncode == 0, out.stderr
    shown: dict[str, Any] = json.loads(out.stdout)
    assert shown["state"] == "running" and len(shown["steps"]) == 2
    out = run_cli(url, "workflows", "show", "missing")
    assert out.returncode != 0 and "no workflow with id 'missing'" in out.stderr
