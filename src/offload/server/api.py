"""The handlers of the REST routes under ``/v1`` and of the operational endpoints (health,
readiness, metrics). Their paths, scopes and documented answers are in the route table
(``offload.server.routes``), which also authorises each request and turns whatever a handler
raises into the JSON error envelope (``offload.server.http``): a client never sees a stack trace.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from offload.backends.unique import outcome_of
from offload.errors import JobNotFound, WorkflowNotFound
from offload.job import JobFilter, JobRecord, JobState, LimitUsage
from offload.server.http import (
    JSON_HEADERS,
    HTTPError,
    decode_body,
    json_response,
    read_json_body,
    retry_after,
)
from offload.server.jsonlimits import checked_cursor
from offload.server.metrics import CONTENT_TYPE
from offload.server.purge import Purge
from offload.server.schemas import (
    EnqueueRequest,
    JobList,
    Purged,
    QueueList,
    QueueOut,
    Status,
    WorkerList,
    job_out,
    worker_out,
    workflow_out,
)
from offload.task import check_unique

if TYPE_CHECKING:
    from offload.backends.base import Backend
    from offload.server.service import ServiceState
    from offload.task import Task

IDEMPOTENCY_KEY_MAX = 200
# Visible ASCII, spaces only inside (HTTP strips them at the ends); shared with the OpenAPI doc.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)
# Idempotency-Key values are stored as dedup keys under this prefix, which a body's ``key``
# may not use: a client could otherwise name (and read) another client's request.
IDEMPOTENCY_PREFIX = "idempotency:"
WAITERS_RETRY_AFTER_S = 1
PROBE_TIMEOUT_S = 2.0  # readiness and metrics must answer even when the backend hangs
_MAX_JOB_ID = 200


class Api:
    """The route handlers of one service instance."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.app = state.app

    # -- jobs ------------------------------------------------------------------------------

    async def enqueue(self, request: Request) -> Response:
        body = await read_json_body(request, self.state.max_body_bytes)
        req: EnqueueRequest = decode_body(body, EnqueueRequest)
        task = self._exposed(req.task)
        args = task.validate_json(bytes(req.args))
        check_unique(req.key, req.unique_for, req.on_conflict)  # a key of the body's own
        key, by_idem = self._dedup_key(task, req.key, request.headers.get("idempotency-key"))
        bound = task.options(
            queue=self._queue(task, req.queue),
            delay=req.delay,
            run_at=_not_past(req.run_at) if req.delay is None else req.run_at,
            priority=req.priority,
            max_attempts=req.max_attempts,
            key=key,
            headers=req.headers,
            unique_for=req.unique_for,
            on_conflict=req.on_conflict,
        )
        new = bound.prepare_json(args)
        record = await self.state.batcher.enqueue(new)
        outcome = outcome_of(new, record)
        replayed = record.id != new.id
        if replayed and record.task != new.task:
            # The caller could not have enqueued that job: say no more than that the key is
            # taken (no id, no arguments, no result), and never wait on it.
            raise HTTPError(
                409,
                "key_conflict",
                "this key is used by a job of another task in this queue; choose another key",
                argument="key",
            )
        if replayed and by_idem and not _same_call(record, new.task, args):
            raise HTTPError(
                409,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
                argument="Idempotency-Key",
            )
        if not replayed:
            metrics = self.state.metrics
            metrics.enqueued.labels(record.task, metrics.queue_label(record.queue)).inc()
        # Relative (RFC 9110 allows it) and cheap: url_for costs more than the rest of the route.
        headers = {"Location": f"{request.scope.get('root_path', '')}/v1/jobs/{record.id}"}
        if outcome == "existing":
            headers["Idempotent-Replayed"] = "true"
        if outcome != "created":
            headers["Offload-Enqueue-Outcome"] = outcome  # existing, or replaced (debounce)
        wait_s = prefer_wait(request.headers.getlist("prefer"), self.state.max_wait_s)
        # A preference may be ignored (RFC 7240): with every waiter slot taken the job is
        # stored and answered at once; refusing would make the client enqueue it again.
        if wait_s is not None and self.state.waiting < self.state.max_waiting:
            headers["Preference-Applied"] = f"wait={_seconds(wait_s)}"
            record = await self._wait(record, wait_s)
        status = 200 if record.state.final else 202
        return json_response(job_out(record), status, headers)

    async def get_job(self, request: Request) -> Response:
        job_id = _job_id(request)
        wait = request.query_params.get("wait")
        record = await self.app.call(lambda b: b.get(job_id))
        if record is None:
            raise JobNotFound(job_id)
        if wait is not None:
            wait_s = self._wait_param(wait)
            if self.state.waiting >= self.state.max_waiting and not record.state.final:
                raise HTTPError(
                    503,
                    "too_many_waiters",
                    "too many requests are waiting for jobs right now; poll without wait, or "
                    "try again later",
                    headers=retry_after(WAITERS_RETRY_AFTER_S),
                )
            record = await self._wait(record, wait_s)
        return json_response(job_out(record))

    async def list_jobs(self, request: Request) -> Response:
        q = request.query_params
        flt = JobFilter(
            state=_state_param(q.get("state")),
            queue=q.get("queue") or None,
            task=q.get("task") or None,
            cursor=q.get("cursor") or None,
            limit=_int_param(q.get("limit"), "limit", 1, self.state.max_page, default=50),
        )
        try:
            checked_cursor(flt.cursor)
            page = await self.app.call(lambda b: b.list_jobs(flt))
        except ValueError as exc:  # a cursor that is not one of ours
            raise HTTPError(422, "invalid_cursor", str(exc), argument="cursor") from None
        return json_response(
            JobList(jobs=[job_out(r) for r in page.jobs], next_cursor=page.next_cursor)
        )

    async def get_workflow(self, request: Request) -> Response:
        view = await self.app.aget_workflow(_workflow_id(request))
        return json_response(workflow_out(view))

    async def cancel_workflow(self, request: Request) -> Response:
        view = await self.app.acancel_workflow(_workflow_id(request))
        return json_response(workflow_out(view))

    async def cancel_job(self, request: Request) -> Response:
        job_id = _job_id(request)
        record = await self.app.call(lambda b: b.cancel(job_id))
        if record is None:
            raise JobNotFound(job_id)
        return json_response(job_out(record))

    async def retry_job(self, request: Request) -> Response:
        job_id = _job_id(request)
        record = await self.app.call(lambda b: b.requeue(job_id))
        if record is None:
            raise JobNotFound(job_id)
        return json_response(job_out(record))

    async def purge_jobs(self, request: Request) -> Response:
        q = request.query_params
        purge = Purge.parse(q.getlist("state"), q.get("queue"), q.get("older_than"))
        return json_response(Purged(deleted=await purge.run(self.app)))

    # -- queues and workers ----------------------------------------------------------------

    async def queues(self, request: Request) -> Response:
        counts, paused = await self.app.call(_counts_and_paused)
        self.state.throughput.observe(counts)
        rates = self.state.throughput.rates()
        limits = self.app.queue_limits
        names = set(counts) | set(limits) | {t.config.queue for t in self.app.tasks.values()}
        out = []
        for name in sorted(names):
            states = counts.get(name, {})
            out.append(
                QueueOut(
                    name=name,
                    depth=states.get(JobState.SCHEDULED, 0) + states.get(JobState.QUEUED, 0),
                    states={s.value: states.get(s, 0) for s in JobState},
                    paused=name in paused,
                    limit=limits.get(name),
                    finished_per_s=rates.get(name),
                )
            )
        return json_response(QueueList(queues=out))

    async def workers(self, request: Request) -> Response:
        infos = await self.app.call(lambda b: b.workers())
        return json_response(WorkerList(workers=[worker_out(w) for w in infos]))

    # -- operations ------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return json_response(Status(status="ok"))

    async def readyz(self, request: Request) -> Response:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self.app.call(lambda b: b.paused_queues())
        except Exception:
            return json_response(
                Status(status="unavailable"), 503, {"Retry-After": str(math.ceil(PROBE_TIMEOUT_S))}
            )
        return json_response(Status(status="ready"))

    async def metrics(self, request: Request) -> Response:
        counts: dict[str, dict[JobState, int]] | None
        limits: list[LimitUsage] = []
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                counts = await self.app.call(lambda b: b.counts())
                if self.app.backend.capabilities.limits:
                    limits = await self.app.call(lambda b: b.limit_usage())
        except Exception:
            counts = None
        return Response(
            self.state.metrics.render(counts, limits),
            media_type=CONTENT_TYPE,
            headers=JSON_HEADERS,
        )

    async def openapi(self, request: Request) -> Response:
        return json_response(self.state.openapi())

    # -- helpers ---------------------------------------------------------------------------

    def _exposed(self, name: str) -> Task[Any, Any]:
        task = self.app.tasks.get(name)
        if task is None or not task.config.expose:  # not exposed looks exactly like unknown
            raise HTTPError(404, "unknown_task", f"no task named {name!r} can be enqueued here")
        return task

    def _queue(self, task: Task[Any, Any], queue: str | None) -> str | None:
        """The queue an HTTP enqueue names: its task's own, or one the service allows it."""
        if queue is None or queue == task.config.queue:
            return queue
        if queue not in self.state.extra_queues.get(task.name, ()):
            raise HTTPError(
                422,
                "queue_not_allowed",
                f"task {task.name!r} can be enqueued over HTTP into its own queue "
                f"({task.config.queue!r}) only",
                argument="queue",
            )
        return queue

    def _dedup_key(
        self, task: Task[Any, Any], key: str | None, idem: str | None
    ) -> tuple[str | None, bool]:
        """The job's dedup key, and whether it came from the Idempotency-Key header."""
        if key is not None and key.startswith(IDEMPOTENCY_PREFIX):
            raise HTTPError(
                422,
                "invalid_request",
                f"keys starting with {IDEMPOTENCY_PREFIX!r} are reserved for Idempotency-Key",
                argument="key",
            )
        if idem is None:
            return key, False
        idem_key = self._idempotent_key(task, idem)
        if key is not None:  # a key in the body is the dedup key already
            return key, False
        return idem_key, True

    def _idempotent_key(self, task: Task[Any, Any], idem: str) -> str:
        if len(idem) > IDEMPOTENCY_KEY_MAX or not IDEMPOTENCY_KEY_RE.match(idem):
            raise HTTPError(
                422,
                "invalid_request",
                f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} visible ASCII characters",
                argument="Idempotency-Key",
            )
        return f"{IDEMPOTENCY_PREFIX}{task.name}:{idem}"

    def _wait_param(self, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not (math.isfinite(value) and 0 <= value <= self.state.max_wait_s):
            raise HTTPError(
                422,
                "invalid_request",
                f"wait must be a number of seconds from 0 to {_seconds(self.state.max_wait_s)}",
                argument="wait",
            )
        return value

    async def _wait(self, record: JobRecord, wait_s: float) -> JobRecord:
        if record.state.final or wait_s <= 0:
            return record
        self.state.waiting += 1
        try:
            latest = await self.app.call(functools.partial(_wait_done, record.id, wait_s))
        finally:
            self.state.waiting -= 1
        return latest if latest is not None else record


async def _wait_done(job_id: str, timeout_s: float, backend: Backend) -> JobRecord | None:
    return await backend.wait_done(job_id, timeout_s)


async def _counts_and_paused(
    backend: Backend,
) -> tuple[dict[str, dict[JobState, int]], set[str]]:
    return await backend.counts(), await backend.paused_queues()


def prefer_wait(headers: list[str], max_wait_s: float) -> float | None:
    """The ``wait`` preference of RFC 7240 ``Prefer`` headers, capped at ``max_wait_s``.

    A preference that cannot be understood is ignored, as the RFC asks.
    """
    for header in headers:
        for pref in header.split(","):
            token = pref.split(";", 1)[0]
            name, eq, value = token.partition("=")
            if name.strip().lower() != "wait" or not eq:
                continue
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                continue
            if math.isfinite(seconds) and seconds >= 0:
                return min(seconds, max_wait_s)
    return None


def _not_past(run_at: datetime | None) -> datetime | None:
    """A run_at already past means "now" (the backend's now): kept as given, a date of year 1
    would sort ahead of every queued job and poison the wait-time histogram."""
    return None if run_at is not None and run_at < datetime.now(UTC) else run_at


def _same_call(record: JobRecord, task: str, args: bytes) -> bool:
    try:
        return record.task == task and msgspec.json.decode(record.args) == msgspec.json.decode(args)
    except msgspec.DecodeError:
        return False


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _workflow_id(request: Request) -> str:
    workflow_id: str = request.path_params["workflow_id"]
    if not 0 < len(workflow_id) <= _MAX_JOB_ID:
        raise WorkflowNotFound(workflow_id[:_MAX_JOB_ID])
    return workflow_id


def _job_id(request: Request) -> str:
    job_id: str = request.path_params["job_id"]
    if not 0 < len(job_id) <= _MAX_JOB_ID:
        raise JobNotFound(job_id[:_MAX_JOB_ID])
    return job_id


def _state_param(raw: str | None) -> JobState | None:
    if raw is None:
        return None
    try:
        return JobState(raw)
    except ValueError:
        states = ", ".join(s.value for s in JobState)
        raise HTTPError(
            422, "invalid_request", f"state must be one of {states}", argument="state"
        ) from None


def _int_param(raw: str | None, name: str, low: int, high: int, *, default: int) -> int:
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise HTTPError(
            422, "invalid_request", f"{name} must be an integer from {low} to {high}", argument=name
        )
    return int(raw)
