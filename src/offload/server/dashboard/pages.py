"""The pages that only look: overview (and its live JSON), queues, jobs, one job, dead jobs
grouped by error, workers, and the confirmation page of a bulk action."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from offload.backends.base import Backend
from offload.errors import CapabilityUnavailable, JobNotFound, WorkflowNotFound
from offload.job import JobFilter, JobRecord, JobState, WorkerInfo
from offload.limits import describe
from offload.server.dashboard import bulk, stats
from offload.server.dashboard.core import Core, Page
from offload.server.dashboard.grouping import ErrorGroup, group_by_shape
from offload.server.dashboard.params import (
    FILTER_KEYS,
    PAGE_SIZES,
    BadRequest,
    JobQuery,
    message,
    page_size,
    query_of,
)
from offload.server.dashboard.security import add_security_headers
from offload.server.http import json_response
from offload.server.jsonlimits import checked_cursor
from offload.server.schemas import job_out
from offload.server.throughput import Throughput
from offload.workflow import ops as workflow_ops
from offload.workflow.record import step_of

DEAD_SCAN = 2000  # dead jobs grouped at most (the most recent)
STATES = [s.value for s in JobState]


@dataclass(frozen=True)
class QueueRow:
    name: str
    states: dict[str, int]
    paused: bool
    rate: float | None

    @property
    def depth(self) -> int:
        return self.states["scheduled"] + self.states["queued"]


class Pages:
    def __init__(self, core: Core, throughput: Throughput | None = None) -> None:
        self.core = core
        self.history = throughput if throughput is not None else Throughput()

    # -- overview ----------------------------------------------------------------------------

    async def _overview(self) -> dict[str, Any]:
        now = time.time()

        async def read(b: Backend) -> tuple[Any, ...]:
            counts, paused = await b.counts(), await b.paused_queues()
            return counts, paused, await _workers(b), await stats.latency(b, now)

        counts, paused, workers, (p50, p95, samples) = await self.core.call(read)
        self.history.observe(counts)
        rows = self._queue_rows(counts, paused)
        totals = {s: sum(r.states[s] for r in rows) for s in STATES}
        slots = stats.slots(workers)
        return {
            "at": now,
            "totals": totals,
            "queues": [
                {"name": r.name, "depth": r.depth, "paused": r.paused, "rate": r.rate, **r.states}
                for r in rows
            ],
            "series": self.history.series(),
            "latency": {"p50_s": p50, "p95_s": p95, "samples": samples},
            "slots": {"workers": slots.workers, "busy": slots.busy, "idle": slots.idle},
        }

    def _queue_rows(
        self, counts: dict[str, dict[JobState, int]], paused: set[str]
    ) -> list[QueueRow]:
        rates = self.history.rates()
        names = set(counts) | paused | {t.config.queue for t in self.core.app.tasks.values()}
        return [
            QueueRow(
                name=name,
                states={s: counts.get(name, {}).get(JobState(s), 0) for s in STATES},
                paused=name in paused,
                rate=rates.get(name, 0.0) if rates else None,
            )
            for name in sorted(names)
        ]

    async def overview(self, page: Page) -> Response:
        query_of(page.request, ())
        data = await self._overview()
        return self.core.render(page, "overview.html", nav="overview", data=data)

    async def overview_json(self, page: Page) -> Response:
        query_of(page.request, ())
        return add_security_headers(json_response(await self._overview()))

    # -- queues and workers ------------------------------------------------------------------

    async def queues(self, page: Page) -> Response:
        msg = message(query_of(page.request, ("msg",)).get("msg"))

        async def read(b: Backend) -> tuple[Any, ...]:
            return await b.counts(), await b.paused_queues()

        counts, paused = await self.core.call(read)
        self.history.observe(counts)
        rows = self._queue_rows(counts, paused)
        oldest = await self.core.call(
            lambda b: _oldest(b, [r.name for r in rows if r.states["queued"]])
        )
        limits = await self.core.call(limit_rows)
        return self.core.render(
            page,
            "queues.html",
            nav="queues",
            rows=rows,
            oldest=oldest,
            limits=limits,
            msg=msg,
            now=time.time(),
        )

    async def workers(self, page: Page) -> Response:
        query_of(page.request, ())
        workers = await self.core.call(_workers)
        workers.sort(key=lambda w: (w.host, w.pid, w.id))
        return self.core.render(
            page, "workers.html", nav="workers", workers=workers, slots=stats.slots(workers)
        )

    # -- jobs --------------------------------------------------------------------------------

    async def jobs(self, page: Page) -> Response:
        values = query_of(page.request, (*FILTER_KEYS, "cursor", "limit", "msg"))
        query = JobQuery.parse(values)
        limit = page_size(values.get("limit"))
        try:
            cursor = checked_cursor(values.get("cursor") or None)
            flt = query.to_filter(cursor=cursor, limit=limit)
            result = await self.core.call(lambda b: b.list_jobs(flt))
        except ValueError:
            raise BadRequest("this page link (cursor) is not valid any more") from None
        known = await self.core.call(lambda b: b.counts())
        queues = sorted(set(known) | {t.config.queue for t in self.core.app.tasks.values()})
        extra = {"limit": str(limit)} if values.get("limit") else {}
        return self.core.render(
            page,
            "jobs.html",
            nav="jobs",
            query=query,
            jobs=result.jobs,
            next_url=page.url("/jobs", query.query_string(cursor=result.next_cursor or "", **extra))
            if result.next_cursor
            else None,
            first_url=page.url("/jobs", query.query_string(**extra)) if cursor else None,
            states=STATES,
            queues=queues,
            tasks=sorted(self.core.app.tasks),
            limit=limit,
            page_sizes=PAGE_SIZES,
            actions=list(bulk.Action),
            msg=message(values.get("msg")),
        )

    async def job(self, page: Page) -> Response:
        values = query_of(page.request, ("msg",))
        job_id = str(page.request.path_params["job_id"])
        record = await self.core.call(lambda b: b.get(job_id)) if len(job_id) <= 200 else None
        if record is None:
            raise JobNotFound(job_id)
        shown = job_out(record)
        return self.core.render(
            page,
            "job.html",
            nav="jobs",
            job=record,
            progress=progress_view(shown.progress),
            fair_key=shown.fair_key,
            retention=shown.retention,
            attempts=_attempts(record),
            msg=message(values.get("msg")),
            can_retry=record.state in bulk.Action.RETRY.states,
            can_cancel=record.state in bulk.Action.CANCEL.states,
            can_delete=record.state in bulk.Action.DELETE.states,
            workflow_id=(step_of(record.id) or (None,))[0],
        )

    async def workflow(self, page: Page) -> Response:
        workflow_id = str(page.request.path_params["workflow_id"])
        found = (
            await self.core.call(lambda b: workflow_ops.show(b, workflow_id))
            if len(workflow_id) <= 200
            else None
        )
        if found is None:
            raise WorkflowNotFound(workflow_id)
        results = {s.index: bytes(s.result) for s in found.steps if s.result is not None}
        return self.core.render(page, "workflow.html", nav="jobs", wf=found, results=results)

    async def bulk_confirm(self, page: Page) -> Response:
        values = query_of(page.request, (*FILTER_KEYS, "action"))
        action = parse_action(values.get("action", ""))
        query = JobQuery.parse(values)
        until = time.time()
        flt = query.to_filter()
        bounded = JobFilter(
            **{**_fields(flt), "created_before": min(flt.created_before or until, until)}
        )
        jobs = await self.core.call(lambda b: bulk.matching(b, bounded, action))
        return self.core.render(
            page,
            "bulk.html",
            nav="jobs",
            action=action,
            query=query,
            count=len(jobs),
            until=f"{until:.6f}",
            back=page.url("/jobs", query.query_string()),
        )

    # -- dead jobs ---------------------------------------------------------------------------

    async def dead_groups(
        self, queue: str | None, task: str | None
    ) -> tuple[list[ErrorGroup], bool]:
        flt = JobFilter(state=JobState.DEAD, queue=queue, task=task, limit=DEAD_SCAN)
        result = await self.core.call(lambda b: b.list_jobs(flt))
        return group_by_shape(result.jobs), result.next_cursor is not None

    async def dead(self, page: Page) -> Response:
        values = query_of(page.request, ("queue", "task", "msg"))
        queue, task = values.get("queue") or None, values.get("task") or None
        groups, more = await self.dead_groups(queue, task)
        return self.core.render(
            page,
            "dead.html",
            nav="dead",
            groups=groups,
            more=more,
            scan=DEAD_SCAN,
            queue=queue or "",
            task=task or "",
            msg=message(values.get("msg")),
        )


def parse_action(raw: str) -> bulk.Action:
    try:
        return bulk.Action(raw)
    except ValueError:
        raise BadRequest("action must be retry, cancel or delete") from None


def _fields(flt: JobFilter) -> dict[str, Any]:
    return {f: getattr(flt, f) for f in flt.__struct_fields__}


async def _workers(backend: Backend) -> list[WorkerInfo]:
    try:
        return await backend.workers()
    except CapabilityUnavailable:  # a backend without a worker registry shows none
        return []


LIMIT_ROWS = 100  # the limits holding the most waiting jobs; one row per key would be endless


async def limit_rows(backend: Backend) -> list[tuple[str, str, int, int]]:
    """(queue, limit described, running, waiting) of the limits most jobs wait on."""
    if not backend.capabilities.limits:
        return []
    usage = sorted(await backend.limit_usage(), key=lambda u: (-u.waiting, u.queue, u.limit))
    return [(u.queue, describe(u.limit), u.running, u.waiting) for u in usage[:LIMIT_ROWS]]


async def _oldest(backend: Backend, queues: list[str]) -> dict[str, JobRecord]:
    found = await asyncio.gather(*(stats.oldest_waiting(backend, q) for q in queues))
    return {q: j for q, j in zip(queues, found, strict=True) if j is not None}


@dataclass(frozen=True)
class Attempt:
    number: int
    worker_id: str | None
    started_at: float | None
    ended_at: float | None
    outcome: str
    error: str | None


def _attempts(job: JobRecord) -> list[Attempt]:
    """Every attempt: the failed ones from the job's errors, then the latest if it is not
    among them (running, succeeded, or ended another way)."""
    out = [Attempt(e.attempt, e.worker_id, None, e.at, "failed", e.error) for e in job.errors]
    if job.attempt and all(a.number != job.attempt for a in out):
        outcome = {JobState.RUNNING: "running", JobState.SUCCEEDED: "succeeded"}.get(
            job.state, job.state.value
        )
        out.append(
            Attempt(job.attempt, job.worker_id, job.started_at, job.finished_at, outcome, None)
        )
    elif out and job.started_at is not None:  # the latest failed one started at started_at
        last = out[-1]
        if last.number == job.attempt:
            out[-1] = Attempt(
                last.number, last.worker_id, job.started_at, last.ended_at, last.outcome, last.error
            )
    return out


@dataclass(frozen=True)
class ProgressView:
    """A job's last progress report as the job page shows it (``fraction`` for a bar)."""

    fraction: float | None
    value: Any
    note: str | None


def progress_view(progress: Any) -> ProgressView | None:
    """The stored report (``{"value": ..., "note": ...}``, untrusted) for the template."""
    if not isinstance(progress, dict) or "value" not in progress:
        return None if progress is None else ProgressView(None, progress, None)
    value, note = progress["value"], progress.get("note")
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    fraction = float(value) if is_number and 0 <= value <= 1 else None
    return ProgressView(fraction, value, note if isinstance(note, str) else None)
