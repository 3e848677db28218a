"""A stored workflow and the one rule that advances it, pure and engine-free.

A workflow is stored as one :class:`WorkflowRecord`: its steps flattened into a graph (each
step names the steps whose results it waits for). A step becomes a job only when it may run;
until then it lives in the record. Engines never decide anything here: inside the atomic write
that applies a step's outcome they call :func:`on_outcome`, store the record it returns and
insert the jobs it returns (River's habit: the rule is computed once, each engine writes it).

A step's job id is ``<workflow id>.<step index>`` (a job id made by ``new_job_id`` has no
``.``), which is how a completion knows it ends a step without a lookup: :func:`step_of`.
"""

from __future__ import annotations

import enum

import msgspec

from offload.job import JobRetention, NewJob
from offload.outcome import Cancelled, Dead, Outcome, Succeeded


class StepState(enum.StrEnum):
    """Where one step is in its workflow (the record's view, not its job's)."""

    WAITING = "waiting"  # some step it waits for has not ended
    READY = "ready"  # may run, held because the workflow failed or was cancelled
    ENQUEUED = "enqueued"  # its job exists (queued, running, retrying)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # its job ended dead or cancelled


class Feed(enum.StrEnum):
    """What a step receives from the steps it waits for, as its first argument."""

    NONE = "none"  # a first step: nothing
    ONE = "one"  # the previous step's result
    ALL = "all"  # the list of a group's results, in member order


class Step(msgspec.Struct, frozen=True, kw_only=True):
    task: str
    queue: str
    args: msgspec.Raw  # the JSON object of its arguments, without the one ``pipe`` fills
    priority: int = 0
    max_attempts: int = 3
    parents: tuple[int, ...] = ()
    feed: Feed = Feed.NONE
    pipe: str | None = None  # the parameter the parents' result fills; None: immutable
    tolerate: bool = False  # a failure is passed on, marked, instead of failing the workflow
    limits: tuple[str, ...] = ()  # its task's and queue's buckets, as a plain enqueue's
    headers: dict[str, str] = {}  # task.options(headers=...), checked when the step was built
    retention: JobRetention | None = None  # its task's own retention, as a plain enqueue's
    state: StepState = StepState.WAITING
    result: msgspec.Raw = msgspec.Raw(b"null")  # meaningful once SUCCEEDED
    error: str | None = None


class WorkflowRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    created_at: float
    steps: tuple[Step, ...]
    cancelled: str | None = None  # the reason, once cancelled

    @property
    def failed_step(self) -> int | None:
        """The first step whose failure stops the workflow, if any."""
        for i, s in enumerate(self.steps):
            if s.state is StepState.FAILED and not s.tolerate:
                return i
        return None

    @property
    def blocked(self) -> bool:
        return self.cancelled is not None or self.failed_step is not None


_encode = msgspec.json.encode
_record_decoder = msgspec.json.Decoder(WorkflowRecord)
_args_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def encode_record(rec: WorkflowRecord) -> bytes:
    return _encode(rec)


def decode_record(raw: bytes | str) -> WorkflowRecord:
    """A record read back from an engine (untrusted): raises msgspec errors when malformed."""
    return _record_decoder.decode(raw)


def step_job_id(workflow_id: str, index: int) -> str:
    return f"{workflow_id}.{index}"


def step_of(job_id: str) -> tuple[str, int] | None:
    """``(workflow id, step index)`` when ``job_id`` is a workflow step's job, else None."""
    wf, dot, idx = job_id.rpartition(".")
    if not dot or not wf or not idx.isdigit():
        return None
    return wf, int(idx)


def failure_marker(error: str | None) -> bytes:
    """What a tolerated failure passes on in place of a result."""
    return _encode({"failed": True, "error": error or "failed"})


def _done(s: Step) -> bool:
    return s.state is StepState.SUCCEEDED or (s.state is StepState.FAILED and s.tolerate)


def _passed_on(s: Step) -> msgspec.Raw:
    if s.state is StepState.SUCCEEDED:
        return s.result
    if s.state is StepState.FAILED:
        return msgspec.Raw(failure_marker(s.error))
    return msgspec.Raw(b"null")


def _job(rec_id: str, index: int, steps: list[Step]) -> NewJob:
    s = steps[index]
    args = bytes(s.args)
    if s.pipe is not None and s.feed is not Feed.NONE:
        values = _args_decoder.decode(args)
        fed = [_passed_on(steps[p]) for p in s.parents]
        values[s.pipe] = fed[0] if s.feed is Feed.ONE else msgspec.Raw(_encode(fed))
        args = _encode(values)
    return NewJob(
        id=step_job_id(rec_id, index),
        task=s.task,
        queue=s.queue,
        args=args,
        priority=s.priority,
        max_attempts=s.max_attempts,
        limits=s.limits,
        headers=dict(s.headers),
        retention=s.retention,
    )


def _release(rec: WorkflowRecord, steps: list[Step]) -> tuple[WorkflowRecord, list[NewJob]]:
    """Every step whose parents have all ended becomes a job (or READY while blocked)."""
    blocked = msgspec.structs.replace(rec, steps=tuple(steps)).blocked
    jobs: list[NewJob] = []
    for i, s in enumerate(steps):
        if s.state not in (StepState.WAITING, StepState.READY):
            continue
        if not all(_done(steps[p]) for p in s.parents):
            continue
        if blocked:
            steps[i] = msgspec.structs.replace(s, state=StepState.READY)
            continue
        steps[i] = msgspec.structs.replace(s, state=StepState.ENQUEUED)
        jobs.append(_job(rec.id, i, steps))
    return msgspec.structs.replace(rec, steps=tuple(steps)), jobs


def start(rec: WorkflowRecord) -> tuple[WorkflowRecord, list[NewJob]]:
    """The record as first stored and the jobs of its first runnable steps."""
    return _release(rec, list(rec.steps))


def on_outcome(
    rec: WorkflowRecord, index: int, outcome: Outcome
) -> tuple[WorkflowRecord, list[NewJob]] | None:
    """Apply one step's outcome: the new record and the jobs to insert with it, or None when
    the outcome does not end the step (a retry, a snooze) or names no step of ``rec``.

    Succeeded stores the result and releases the steps it completes; if it clears the failure
    that blocked the workflow (a dead step retried), the steps held READY are released too, so
    retrying a dead step resumes the workflow. Dead or cancelled marks the step failed: a
    tolerated one passes a marker on; otherwise the steps after it are never released.
    """
    if not 0 <= index < len(rec.steps):
        return None
    steps = list(rec.steps)
    s = steps[index]
    if s.state not in (StepState.ENQUEUED, StepState.FAILED):
        return None  # already applied (a step succeeds once) or not released yet
    if isinstance(outcome, Succeeded):
        result = msgspec.Raw(outcome.result if outcome.result is not None else b"null")
        steps[index] = msgspec.structs.replace(
            s, state=StepState.SUCCEEDED, result=result, error=None
        )
    elif isinstance(outcome, Dead | Cancelled):
        error = outcome.error if isinstance(outcome, Dead) else f"cancelled: {outcome.reason}"
        steps[index] = msgspec.structs.replace(s, state=StepState.FAILED, error=error)
    else:
        return None
    return _release(rec, steps)


def cancel(rec: WorkflowRecord, reason: str) -> tuple[WorkflowRecord, list[str]]:
    """The cancelled record and the job ids of its steps that may still be active (to cancel
    with the engine's own job cancel, in the same write). Cancelling twice changes nothing."""
    if rec.cancelled is not None:
        return rec, []
    active = [
        step_job_id(rec.id, i) for i, s in enumerate(rec.steps) if s.state is StepState.ENQUEUED
    ]
    return msgspec.structs.replace(rec, cancelled=reason), active
