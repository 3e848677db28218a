"""One trace from an HTTP enqueue (the ASGI app in this process) through a worker in another
process (``offload worker``, its spans written to a file by an SDK exporter there): the
worker's ``process`` span is a child of, and links to, the ``create`` span of the request."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import offload
from offload.contrib.otel import TracingHook
from offload.server import create_service
from tests.procs import ROOT, child_env, offload_cmd, stop


def start_traced_worker(url: str, spans_file: Path) -> subprocess.Popen[str]:
    env = {**child_env(), "TRACED_SPANS_FILE": str(spans_file)}
    cmd = offload_cmd(url, "worker", "tests.apps.traced:app", "--burst", "--log-level", "warning")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True)


def spans_in(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_one_trace_from_http_enqueue_to_a_worker_process(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    app = offload.App(url)
    app.add_hook(TracingHook(provider))

    @app.task(name="traced", expose=True)
    def traced(n: int) -> int:
        raise AssertionError("runs in the worker process only")

    service = create_service(app)
    async with service.router.lifespan_context(service):
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            # The caller's span: the ASGI app runs in this task, so the enqueue sees it.
            with provider.get_tracer("test").start_as_current_span("client request") as req:
                r = await client.post("/v1/jobs", json={"task": "traced", "args": {"n": 21}})
            assert r.status_code == 202, r.text
            assert r.json()["headers"]["traceparent"].startswith("00-")
        job = await app.aget_job(r.json()["id"])
        spans_file = tmp_path / "worker-spans.jsonl"
        worker = start_traced_worker(url, spans_file)
        try:
            assert await job.aresult(timeout=30) == 42
            assert await asyncio.to_thread(worker.wait, 30) == 0
        finally:
            stop(worker)
    trace_id = req.get_span_context().trace_id
    (create,) = [s for s in exporter.get_finished_spans() if s.name == "create default"]
    assert create.kind is trace.SpanKind.PRODUCER and create.context is not None
    assert create.context.trace_id == trace_id
    assert create.parent is not None and create.parent.span_id == req.get_span_context().span_id

    theirs = {s["name"]: s for s in spans_in(spans_file)}
    process, inside = theirs["process default"], theirs["inside the task"]
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["context"]["trace_id"] == f"0x{trace_id:032x}"
    assert process["parent_id"] == f"0x{create.context.span_id:016x}"
    assert [link["context"]["span_id"] for link in process["links"]] == [
        f"0x{create.context.span_id:016x}"
    ]
    assert process["attributes"]["messaging.message.id"] == job.id
    assert inside["parent_id"] == process["context"]["span_id"]
    assert inside["context"]["trace_id"] == f"0x{trace_id:032x}"
