"""The App's workflow operations, on a backend (run on the backend's loop by ``App.call``)."""

from __future__ import annotations

from offload.backends.base import Backend
from offload.errors import CapabilityUnavailable
from offload.workflow.handle import WorkflowView, load_view
from offload.workflow.record import WorkflowRecord, start


def _check(backend: Backend) -> None:
    if not backend.capabilities.workflows:
        raise CapabilityUnavailable(f"{type(backend).__name__} does not run workflows")


async def store(backend: Backend, record: WorkflowRecord) -> WorkflowRecord:
    """Store a built workflow and its first runnable steps' jobs, in one backend write."""
    _check(backend)
    first, jobs = start(record)
    return await backend.enqueue_workflow(first, jobs)


async def show(backend: Backend, workflow_id: str) -> WorkflowView | None:
    _check(backend)
    return await load_view(backend, workflow_id)


async def cancel(backend: Backend, workflow_id: str) -> WorkflowView | None:
    _check(backend)
    if await backend.cancel_workflow(workflow_id, "workflow cancelled") is None:
        return None
    return await load_view(backend, workflow_id)
