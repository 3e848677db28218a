"""OpenTelemetry tracing as a hook (``pip install 'offload[otel]'``; the API only: bring the
SDK and exporter of your choice).

``app.add_hook(TracingHook())`` gives, following the messaging semantic conventions
(``messaging.system`` = ``offload``):

- a ``create <queue>`` span (kind PRODUCER) for each job enqueued, in the caller's trace,
  carrying the job's id; its context is injected into the job's headers (``traceparent``,
  ``tracestate``: the global propagator, W3C Trace Context by default), so it travels with the
  job through any backend, to a worker in another process or on another machine;
- a ``process <queue>`` span (kind CONSUMER) around each attempt, current while the task runs
  (async or sync), so the task's own spans and outgoing calls nest under it. It is a child of
  the job's ``create`` span and links to it (the creation context, as the conventions ask),
  so one trace runs from the request that enqueued the job to the work it did, retries
  included. Its status is ERROR for a failed attempt (``RetryAt``, ``Dead``) and for an
  attempt whose lease was lost.

A job enqueued without this hook (or by a producer without tracing) has no trace context in
its headers: its ``process`` span starts a new trace.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import TYPE_CHECKING

from offload.errors import MissingDependency
from offload.hooks import Hook
from offload.outcome import Dead, Outcome, RetryAt, outcome_name

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - depends on what is installed
    raise MissingDependency("OpenTelemetry tracing", "otel") from None

if TYPE_CHECKING:
    from offload.job import JobRecord, NewJob

SYSTEM = "offload"

# The attempt's span and the token that made it current, in the job's own context: set by
# before_run, read by after_run in that same context (the worker runs both in the job's task).
_Held = tuple[trace.Span, contextvars.Token[otel_context.Context]]
_ATTEMPT: contextvars.ContextVar[_Held | None] = contextvars.ContextVar(
    "offload_otel_attempt", default=None
)


class TracingHook(Hook):
    """Spans for enqueues and attempts; ``tracer_provider`` defaults to the global one."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("offload", tracer_provider=tracer_provider)

    def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
        for job in jobs:
            span = self._tracer.start_span(
                f"create {job.queue}",
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": SYSTEM,
                    "messaging.operation.type": "create",
                    "messaging.operation.name": "enqueue",
                    "messaging.destination.name": job.queue,
                    "messaging.message.id": job.id,
                    "offload.task": job.task,
                },
            )
            # The producer's context, into the job's headers (checked for size after the hooks).
            propagate.inject(job.headers, context=trace.set_span_in_context(span))
            span.end()

    def before_run(self, job: JobRecord) -> None:
        created = propagate.extract(job.headers) if job.headers else None
        creation = trace.get_current_span(created).get_span_context() if created else None
        links = [trace.Link(creation)] if creation is not None and creation.is_valid else None
        span = self._tracer.start_span(
            f"process {job.queue}",
            context=created,
            links=links,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "run",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.id,
                "offload.task": job.task,
                "offload.job.attempt": job.attempt,
                "offload.job.max_attempts": job.max_attempts,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        _ATTEMPT.set((span, token))

    def after_run(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
        held = _ATTEMPT.get()
        if held is None:
            return
        span, token = held
        _ATTEMPT.set(None)
        span.set_attribute("offload.job.outcome", outcome_name(outcome))
        if isinstance(outcome, RetryAt | Dead):
            span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error.splitlines()[0]))
        elif outcome is None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "lease lost"))
        span.end()
        otel_context.detach(token)
