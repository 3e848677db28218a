"""Workflows on a broker with a state store: the store advances, the broker delivers.

The store applies a step's outcome and advances its workflow in one atomic write (its own
``complete``). The jobs that write releases then need their messages, and a process that dies
between the store's write and the publish must not leave them without one: so, as for an
enqueue, an outbox marker naming the jobs the outcome may release (the steps that wait for
this one, read from the workflow's record) is stored first, and deleted once their messages
are confirmed (:mod:`offload.backends.brokered.outbox`). A job that gets two messages (two
members of a group both saw the callback waiting) runs once: the store's lease decides.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from offload.backends.base import Backend
from offload.backends.brokered.limited import LimitedLane, carried, carried_ids
from offload.backends.brokered.outbox import Outbox
from offload.backends.brokered.store import get_many
from offload.job import WAITING_STATES, Lease, NewJob
from offload.outcome import Cancelled, Dead, Outcome, Succeeded
from offload.workflow.record import WorkflowRecord, step_job_id, step_of


class StoreWorkflows:
    """Mixin for a broker backend with a store (``_store``) and an outbox (``_outbox``)."""

    _store: Backend
    _outbox: Outbox
    _lane: LimitedLane

    async def enqueue_workflow(
        self, workflow: WorkflowRecord, jobs: Sequence[NewJob]
    ) -> WorkflowRecord:
        """The store keeps the workflow and its first jobs (with their marker, in the same
        write); then the messages of those without limits are published."""
        ids = carried_ids(jobs)
        marker = [self._outbox.marker(ids)] if ids else []
        stored = await self._store.enqueue_workflow(workflow, [*jobs, *marker])
        if len(ids) < len(jobs):
            self._lane.note()
        for m in marker:
            await self._publish(ids, m.id)
        return stored

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        return await self._store.get_workflow(workflow_id)

    async def cancel_workflow(self, workflow_id: str, reason: str) -> WorkflowRecord | None:
        """The store cancels; a cancelled step's message is dropped when next delivered."""
        return await self._store.cancel_workflow(workflow_id, reason)

    async def _complete_in_store(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        """``store.complete(results)``, and the messages of the steps it released."""
        ending = [le.job_id for le, o in results if isinstance(o, Succeeded | Dead | Cancelled)]
        released = await self._may_release([i for i in ending if step_of(i) is not None])
        if not released:
            await self._store.complete(results)
            return
        marker = self._outbox.marker(released)
        await self._store.enqueue([marker])
        await self._store.complete(results)
        await self._publish(released, marker.id)

    async def _may_release(self, step_jobs: Sequence[str]) -> list[str]:
        """The job ids of the steps that wait for any of ``step_jobs``."""
        by_workflow: dict[str, set[int]] = {}
        for job_id in step_jobs:
            step = step_of(job_id)
            if step is not None:
                by_workflow.setdefault(step[0], set()).add(step[1])
        out: list[str] = []
        for wf_id, ended in by_workflow.items():
            rec = await self._store.get_workflow(wf_id)
            if rec is not None:
                out += [
                    step_job_id(wf_id, j)
                    for j, s in enumerate(rec.steps)
                    if ended.intersection(s.parents)
                ]
        return out

    async def _publish(self, job_ids: Sequence[str], marker_id: str) -> None:
        recs = await get_many(self._store, list(job_ids))
        waiting = [r for r in recs if r is not None and r.state in WAITING_STATES]
        if len(carried(waiting)) < len(waiting):
            self._lane.note()  # the store's claim takes those (no message)
            waiting = carried(waiting)
        if waiting:
            await self._outbox.publisher.publish_jobs(waiting, time.time())
            await self._outbox.publisher.notify()
        self._outbox.published(marker_id)
