"""OpenTelemetry spans from the TracingHook, captured by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

import offload
from offload.contrib.otel import TracingHook
from offload.worker import Worker, WorkerConfig


async def test_enqueue_and_attempt_spans_follow_the_conventions() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    app = offload.App("memory://")
    app.add_hook(TracingHook(provider))

    @app.task(name="work")
    def work() -> None:
        with tracer.start_as_current_span("inside"):  # in the task's thread
            pass

    @app.task(name="fails", max_attempts=1)
    async def fails() -> None:
        raise ValueError("broken")

    async with app:
        with tracer.start_as_current_span("request") as request:
            job = await work.aenqueue()
        bad = await fails.aenqueue()
        await asyncio.wait_for(Worker(app, WorkerConfig(poll_s=0.05, burst=True)).run(), 10)
    spans = {
        s.name + ":" + str((s.attributes or {}).get("offload.task")): s
        for s in exporter.get_finished_spans()
    }
    create = spans["create default:work"]
    assert create.kind is trace.SpanKind.PRODUCER
    assert create.parent is not None and create.parent.span_id == request.get_span_context().span_id
    assert (create.attributes or {})["messaging.message.id"] == job.id
    process = spans["process default:work"]
    assert process.kind is trace.SpanKind.CONSUMER
    attributes = process.attributes or {}
    assert attributes["messaging.system"] == "offload"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == "default"
    assert attributes["offload.job.attempt"] == 1
    assert attributes["offload.job.outcome"] == "succeeded"
    assert process.status.status_code is trace.StatusCode.UNSET
    inside = spans["inside:None"]
    assert inside.parent is not None and inside.parent.span_id == process.context.span_id
    failed = spans["process default:fails"]
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert "ValueError: broken" in (failed.status.description or "")
    assert (failed.attributes or {})["messaging.message.id"] == bad.id
