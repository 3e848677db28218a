"""Workflows: chains, groups, callbacks, nesting, failure, cancel and resume, driven through
the Backend seam (claim and complete as a worker would). The step that releases the next one
is the completion itself: each test reads the next step's job right after one ``complete``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import msgspec

from offload.app import App
from offload.backends.base import Backend
from offload.errors import CapabilityUnavailable
from offload.job import JobRecord, JobState
from offload.outcome import Dead, Outcome, Succeeded
from offload.testing.helpers import MakeBackend, claim_request, lease_of, must_get, require
from offload.workflow import chain, group
from offload.workflow.canvas import Node, build
from offload.workflow.handle import WorkflowView, view
from offload.workflow.record import WorkflowRecord, start, step_job_id

WF_QUEUE = "wf"


def _tasks() -> SimpleNamespace:
    """Tasks to shape workflows with (their app is never opened: only the shape is used)."""
    app = App("memory://")

    @app.task(name="wf.add", queue=WF_QUEUE)
    def add(x: int, y: int = 0) -> int:
        return x + y

    @app.task(name="wf.total", queue=WF_QUEUE)
    def total(xs: list[Any]) -> int:
        return 0

    @app.task(name="wf.ping", queue=WF_QUEUE)
    def ping() -> str:
        return "pong"

    return SimpleNamespace(add=add, total=total, ping=ping)


async def _enqueue(backend: Backend, node: Node) -> WorkflowRecord:
    require(backend, "workflows")
    first, jobs = start(build(node))
    return await backend.enqueue_workflow(first, jobs)


async def _claim_all(backend: Backend) -> list[JobRecord]:
    return sorted(await backend.claim(claim_request(WF_QUEUE, 50)), key=lambda j: j.id)


async def _run(backend: Backend, job: JobRecord, outcome: Outcome) -> None:
    await backend.complete([(lease_of(job), outcome)])


def _args(job: JobRecord) -> dict[str, Any]:
    value: dict[str, Any] = msgspec.json.decode(job.args)
    return value


async def _view(backend: Backend, wf_id: str) -> WorkflowView:
    rec = await backend.get_workflow(wf_id)
    assert rec is not None
    jobs = {}
    for i in range(len(rec.steps)):
        job = await backend.get(step_job_id(wf_id, i))
        if job is not None:
            jobs[job.id] = job
    return view(rec, jobs)


class WorkflowConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_store_less_form_refuses_workflows(self, backend: Backend) -> None:
        if backend.capabilities.workflows:
            return
        t = _tasks()
        first, jobs = start(build(chain(t.add.s(1))))
        for call in (
            backend.enqueue_workflow(first, jobs),
            backend.get_workflow(first.id),
            backend.cancel_workflow(first.id, "x"),
        ):
            try:
                await call
            except CapabilityUnavailable:
                continue
            raise AssertionError("a backend without workflows must raise CapabilityUnavailable")

    async def test_chain_passes_each_result_on(self, backend: Backend) -> None:
        t = _tasks()
        wf = await _enqueue(backend, chain(t.add.s(1, 2), t.add.s(10), t.ping.si()))
        (a,) = await _claim_all(backend)  # only the first step is runnable
        assert a.id == step_job_id(wf.id, 0) and _args(a) == {"x": 1, "y": 2}
        await _run(backend, a, Succeeded(b"3"))
        (b,) = await _claim_all(backend)
        assert _args(b) == {"x": 3, "y": 10}
        await _run(backend, b, Succeeded(b"13"))
        (c,) = await _claim_all(backend)
        assert _args(c) == {}  # immutable: it does not receive 13
        await _run(backend, c, Succeeded(b'"pong"'))
        v = await _view(backend, wf.id)
        assert v.state == "succeeded"
        assert [bytes(s.result or b"") for s in v.steps] == [b"3", b"13", b'"pong"']
        assert await _claim_all(backend) == []

    async def test_group_callback_runs_once_with_every_result(
        self, make_backend: MakeBackend
    ) -> None:
        t = _tasks()
        backends = [await make_backend() for _ in range(4)]
        await _enqueue(backends[0], group(*(t.add.s(i) for i in range(4))).then(t.total.s()))
        members = await _claim_all(backends[0])
        assert len(members) == 4
        # Each member ends on its own backend instance at once: exactly one sees the last.
        await asyncio.gather(
            *(
                _run(b, m, Succeeded(str(i * 10).encode()))
                for i, (b, m) in enumerate(zip(backends, members, strict=True))
            )
        )
        (callback,) = await _claim_all(backends[0])
        assert callback.task == "wf.total" and _args(callback) == {"xs": [0, 10, 20, 30]}
        assert await _claim_all(backends[0]) == []

    async def test_group_nested_in_a_chain(self, backend: Backend) -> None:
        t = _tasks()
        wf = await _enqueue(backend, chain(t.add.s(1), group(t.add.s(1), t.add.s(2)), t.total.s()))
        (a,) = await _claim_all(backend)
        await _run(backend, a, Succeeded(b"5"))
        b, c = await _claim_all(backend)
        assert (_args(b), _args(c)) == ({"x": 5, "y": 1}, {"x": 5, "y": 2})
        await _run(backend, c, Succeeded(b"7"))
        assert await _claim_all(backend) == []  # the last step waits for both
        await _run(backend, b, Succeeded(b"6"))
        (d,) = await _claim_all(backend)
        assert d.id == step_job_id(wf.id, 3) and _args(d) == {"xs": [6, 7]}

    async def test_dead_step_fails_the_workflow_and_retry_resumes_it(
        self, backend: Backend
    ) -> None:
        t = _tasks()
        wf = await _enqueue(backend, chain(t.add.s(1), t.add.s(2), t.add.s(3)))
        (a,) = await _claim_all(backend)
        await _run(backend, a, Dead("boom"))
        assert await _claim_all(backend) == []
        v = await _view(backend, wf.id)
        assert v.state == "failed" and v.error is not None and "boom" in v.error
        assert [s.state for s in v.steps] == ["dead", "cancelled", "cancelled"]
        assert all("boom" in (s.error or "") for s in v.steps[1:])
        await backend.requeue(a.id)  # retrying the dead step resumes the workflow
        (again,) = await _claim_all(backend)
        await _run(backend, again, Succeeded(b"1"))
        (b,) = await _claim_all(backend)
        assert _args(b) == {"x": 1, "y": 2}
        assert (await _view(backend, wf.id)).state == "running"

    async def test_continue_on_failure_marks_the_failure(self, backend: Backend) -> None:
        t = _tasks()
        node = group(t.add.s(1), t.add.s(2), continue_on_failure=True).then(t.total.s())
        wf = await _enqueue(backend, node)
        a, b = await _claim_all(backend)
        await _run(backend, a, Dead("nope"))
        await _run(backend, b, Succeeded(b"2"))
        (cb,) = await _claim_all(backend)
        assert _args(cb) == {"xs": [{"failed": True, "error": "nope"}, 2]}
        await _run(backend, cb, Succeeded(b"2"))
        assert (await _view(backend, wf.id)).state == "succeeded"

    async def test_cancel_revokes_running_and_drops_pending_steps(
        self, make_backend: MakeBackend
    ) -> None:
        worker, admin = await make_backend(), await make_backend()
        t = _tasks()
        wf = await _enqueue(worker, chain(t.add.s(1), t.add.s(2)))
        (a,) = await _claim_all(worker)
        rec = await admin.cancel_workflow(wf.id, "workflow cancelled")
        assert rec is not None and rec.cancelled == "workflow cancelled"
        assert await admin.cancel_workflow(wf.id, "again") == rec  # idempotent
        assert await worker.heartbeat([lease_of(a)], 30.0) == set()
        await _run(worker, a, Succeeded(b"1"))  # its lease was revoked: ignored
        assert (await must_get(admin, a.id)).state is JobState.CANCELLED
        assert await _claim_all(worker) == []
        v = await _view(admin, wf.id)
        assert v.state == "cancelled" and [s.state for s in v.steps] == ["cancelled"] * 2
        assert await admin.get_workflow("no-such-workflow") is None
        assert await admin.cancel_workflow("no-such-workflow", "x") is None

    async def test_a_lost_lease_does_not_advance(self, make_backend: MakeBackend) -> None:
        backend = await make_backend()
        t = _tasks()
        wf = await _enqueue(backend, chain(t.add.s(1), t.add.s(2)))
        (a,) = await _claim_all(backend)
        stale = msgspec.structs.replace(lease_of(a), worker_id="someone-else")
        await backend.complete([(stale, Succeeded(b"1"))])
        assert await _claim_all(backend) == []
        rec = await backend.get_workflow(wf.id)
        assert rec is not None and rec.steps[1].state == "waiting"
