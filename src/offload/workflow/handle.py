"""What users hold and see of a workflow: :class:`Workflow` (the handle) and its view.

The view joins the stored record with its steps' jobs: a step's state is its job's state once
it has one (so a step cancelled by hand, or ended dead when its lease ran out, shows so), and a
step that never got a job is ``pending``, or ``cancelled`` with the reason once the workflow
has failed or was cancelled.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from offload.errors import JobFailed, UnknownTask
from offload.job import JobRecord, JobState
from offload.workflow.record import Step, StepState, WorkflowRecord, step_job_id

if TYPE_CHECKING:
    from offload.app import App
    from offload.backends.base import Backend

_WAIT_SLICE_S = 30.0
_ACTIVE = frozenset(s.value for s in (JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING))


class StepView(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    task: str
    queue: str
    state: str  # a JobState value, or "pending"
    waits_for: list[int]
    job_id: str | None = None
    result: msgspec.Raw | None = None
    error: str | None = None


class WorkflowView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    state: str  # running | succeeded | failed | cancelled
    created_at: float
    steps: list[StepView]
    error: str | None = None

    @property
    def final(self) -> bool:
        return self.state != "running"


def _job_state(s_state: StepState, job: JobRecord | None) -> str | None:
    if job is not None:
        return job.state.value
    if s_state is StepState.SUCCEEDED:
        return JobState.SUCCEEDED.value
    if s_state is StepState.FAILED:
        return JobState.DEAD.value
    if s_state is StepState.ENQUEUED:
        return JobState.QUEUED.value  # its job was deleted: it cannot finish
    return None


def view(rec: WorkflowRecord, jobs: Mapping[str, JobRecord]) -> WorkflowView:
    """The workflow as its record and its steps' current jobs tell it."""
    steps: list[StepView] = []
    error = rec.cancelled
    failed = False
    for i, s in enumerate(rec.steps):
        job_id = step_job_id(rec.id, i)
        job = jobs.get(job_id)
        state = _job_state(s.state, job)
        step_error = job.error if job is not None else s.error
        if state in (JobState.DEAD, JobState.CANCELLED) and not s.tolerate:
            failed = True
            error = error or f"step {i} ({s.task}) ended {state}: {step_error}"
        steps.append(
            StepView(
                index=i,
                task=s.task,
                queue=s.queue,
                state=state or "pending",
                waits_for=list(s.parents),
                job_id=job_id if state is not None else None,
                result=s.result if s.state is StepState.SUCCEEDED else None,
                error=step_error,
            )
        )
    if rec.cancelled is not None or failed:
        steps = [
            msgspec.structs.replace(v, state="cancelled", error=error)
            if v.state == "pending"
            else v
            for v in steps
        ]
    if rec.cancelled is not None:
        state = "cancelled"
    elif failed:
        state = "failed"
    elif all(_ended(s) for s in rec.steps):
        state = "succeeded"
    else:
        state = "running"
    return WorkflowView(id=rec.id, state=state, created_at=rec.created_at, steps=steps, error=error)


def _ended(s: Step) -> bool:
    return s.state is StepState.SUCCEEDED or (s.state is StepState.FAILED and s.tolerate)


async def load_view(backend: Backend, workflow_id: str) -> WorkflowView | None:
    """Read a workflow and its steps' jobs (one read per job that exists) and join them."""
    rec = await backend.get_workflow(workflow_id)
    if rec is None:
        return None
    jobs: dict[str, JobRecord] = {}
    for i, s in enumerate(rec.steps):
        if s.state in (StepState.ENQUEUED, StepState.SUCCEEDED, StepState.FAILED):
            job = await backend.get(step_job_id(rec.id, i))
            if job is not None:
                jobs[job.id] = job
    return view(rec, jobs)


async def _wait_done(job_id: str, timeout_s: float, backend: Backend) -> None:
    await backend.wait_done(job_id, timeout_s)


class Workflow:
    """A handle on one stored workflow (``chain(...).enqueue()`` returns one)."""

    def __init__(self, app: App, record: WorkflowRecord) -> None:
        self.app = app
        self.id = record.id
        self.record = record

    def __repr__(self) -> str:
        return f"<Workflow {self.id} steps={len(self.record.steps)}>"

    async def aview(self) -> WorkflowView:
        return await self.app.aget_workflow(self.id)

    def view(self) -> WorkflowView:
        """Its steps, their states and results, now."""
        return self.app.get_workflow(self.id)

    async def acancel(self) -> WorkflowView:
        return await self.app.acancel_workflow(self.id)

    def cancel(self) -> WorkflowView:
        """Cancel its pending steps and revoke its running ones."""
        return self.app.cancel_workflow(self.id)

    async def aresult(self, timeout: float | None = None) -> Any:
        """Wait until it ends; return its last step's result (a list when it ends with a
        group). Raises JobFailed when it failed or was cancelled, TimeoutError after
        ``timeout`` seconds. It waits on the job of a step that is running, never polls."""
        deadline = None if timeout is None else time.monotonic() + timeout
        idle = 0
        while True:
            v = await self.aview()
            if v.final:
                return self._outcome(v)
            left = _WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"workflow {self.id} still running after {timeout}s")
            active = [s.job_id for s in v.steps if s.job_id and s.state in _ACTIVE]
            if not active:
                # Read between a step's end and the next step's job (record and jobs are
                # read apart): look again once; twice means nothing can move it.
                idle += 1
                if idle > 2:
                    raise JobFailed(self.id, "stalled", "no step of it is queued or running")
                continue
            idle = 0
            wait = functools.partial(_wait_done, active[0], min(left, _WAIT_SLICE_S))
            await self.app.call(wait)

    def result(self, timeout: float | None = None) -> Any:
        """``aresult`` for sync code."""
        return self.app.run_sync(lambda _b: self.aresult(timeout))

    def _outcome(self, v: WorkflowView) -> Any:
        if v.state != "succeeded":
            raise JobFailed(self.id, v.state, v.error)
        fed = {p for s in v.steps for p in s.waits_for}
        results = [self._decode(s) for s in v.steps if s.index not in fed]
        return results[0] if len(results) == 1 else results

    def _decode(self, s: StepView) -> Any:
        raw = bytes(s.result) if s.result is not None else None
        try:
            return self.app.get_task(s.task).decode_result(raw)
        except UnknownTask:
            return None if raw is None else msgspec.json.decode(raw)
