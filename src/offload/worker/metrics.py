"""Prometheus metrics of ``offload worker --metrics-port N``: the families ``offload serve``
exports for its jobs (:class:`offload.server.metrics.JobMetrics`), on an HTTP endpoint.

One process: the worker's own registry, served from a thread.

``--processes N``: one endpoint for all, served by the supervisor, in prometheus_client's
multiprocess mode: every child writes its samples to files in a directory the supervisor
made (``PROMETHEUS_MULTIPROC_DIR`` in the child's environment), and the supervisor's endpoint
sums them at scrape time. Chosen over the supervisor scraping its children because counters
survive a child that dies and is restarted (its files stay, so totals never go backwards),
and the children open no port. A dead child's live gauges (its slots) are dropped when the
supervisor sees it exit.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from offload.errors import MissingDependency, OffloadError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

    from offload.app import App
    from offload.server.metrics import Counts, JobMetrics

log = logging.getLogger("offload.worker")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's name for the directory
READ_TIMEOUT_S = 2.0  # a scrape must answer even when the backend hangs (as offload serve's)


def _require() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:  # pragma: no cover - depends on what is installed
        raise MissingDependency("worker metrics", "metrics") from None


def job_metrics() -> JobMetrics:
    """A fresh set of the job families, in a registry of their own."""
    _require()
    from prometheus_client import CollectorRegistry

    from offload.server.metrics import JobMetrics

    return JobMetrics(CollectorRegistry(auto_describe=True))


def depth_reader(app: App) -> Callable[[], Counts | None]:
    """Reads the queue depth through the app (from the scraping thread): None on failure."""

    def read() -> Counts | None:
        try:
            return app.run_sync(lambda b: asyncio.wait_for(b.counts(), READ_TIMEOUT_S))
        except (OffloadError, TimeoutError) as exc:
            log.warning("metrics: could not read the queue depth: %s", exc)
            return None

    return read


def watch_queues(registry: CollectorRegistry, read: Callable[[], Counts | None]) -> None:
    from offload.server.metrics import QueueDepth

    registry.register(QueueDepth(read))


class Endpoint:
    """An HTTP server answering ``GET /metrics`` (any path, as prometheus_client does)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving (idempotent). A scrape still running finishes in its own thread."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve(metrics: JobMetrics, host: str, port: int) -> Endpoint:
    """Serve one worker's registry on ``host:port`` (port 0: any free port)."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return Endpoint(server, thread)


class Aggregate:
    """The supervisor's side of multiprocess mode: the directory and the one endpoint."""

    def __init__(self, host: str, port: int, app: App) -> None:
        _require()
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = tempfile.mkdtemp(prefix="offload-metrics-")
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.path)  # type: ignore[no-untyped-call]
        watch_queues(registry, depth_reader(app))  # the supervisor's own connection
        from prometheus_client import start_http_server

        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        self.endpoint = Endpoint(server, thread)

    def child_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        return {**environ, MULTIPROC_ENV: self.path}

    def process_dead(self, pid: int) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.endpoint.close()
        shutil.rmtree(self.path, ignore_errors=True)
