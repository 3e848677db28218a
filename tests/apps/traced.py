"""The worker side of tests/test_otel_cross_process.py: an app traced by ``TracingHook``
whose spans an SDK exporter appends, one JSON object per line, to the file named by
``TRACED_SPANS_FILE`` (read here, in a test app: the library itself reads no environment).
Its URL comes from ``--url``.
"""

from __future__ import annotations

import os

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import offload
from offload.contrib.otel import TracingHook

provider = TracerProvider()
_out = open(os.environ["TRACED_SPANS_FILE"], "a", encoding="utf-8")  # open for the process's life
provider.add_span_processor(
    SimpleSpanProcessor(
        ConsoleSpanExporter(out=_out, formatter=lambda span: span.to_json(indent=None) + "\n")
    )
)
tracer = provider.get_tracer("tests.apps.traced")

app = offload.App("memory://")
app.add_hook(TracingHook(provider))


@app.task(name="traced", expose=True)
def traced(n: int) -> int:
    with tracer.start_as_current_span("inside the task"):
        return n * 2
