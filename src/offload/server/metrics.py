"""Prometheus metrics of one service instance, in a registry it owns (never the global one,
so two services in one process, or a test, never share counters).

Job counters by task and queue: ``enqueued`` counts jobs stored through this service; the
others (started, succeeded, failed, retried, dead, cancelled) and the two histograms count the
jobs run by this process's embedded workers (a separate ``offload worker`` process is not seen
here). Queue depth by state is read from the backend at each scrape, so it covers every
producer and worker; worker slots are those of the embedded workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from offload.job import JobRecord, JobState
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Snoozed, Succeeded

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from offload.worker import Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From "picked up at once" to "waited minutes": enqueue-to-start latency and run time.
LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# Distinct queue label values: each one is a time series in every scraper. Past this many,
# the rest are counted under OTHER_QUEUE (queue names come from stored jobs, not only from
# this app's tasks).
MAX_QUEUE_LABELS = 100
OTHER_QUEUE = "_other"


class QueueLabels:
    """The queue label of each queue name: the first MAX_QUEUE_LABELS names seen keep theirs
    (the app's own queues first), the others share OTHER_QUEUE."""

    def __init__(self, known: Iterable[str] = (), limit: int = MAX_QUEUE_LABELS) -> None:
        self.limit = limit
        self._names: set[str] = set()
        for name in known:
            self(name)

    def __call__(self, queue: str) -> str:
        if queue in self._names:
            return queue
        if len(self._names) < self.limit:
            self._names.add(queue)
            return queue
        return OTHER_QUEUE


class _Snapshot(Collector):
    """Gauges computed at scrape time: queue depth (set before each scrape) and worker slots."""

    def __init__(self, workers: Callable[[], Sequence[Worker]], labels: QueueLabels) -> None:
        self._workers = workers
        self._labels = labels
        self.counts: Mapping[str, Mapping[JobState, int]] = {}
        self.backend_up = 1

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "offload_queue_jobs", "Jobs stored, by queue and state.", labels=["queue", "state"]
        )
        by_label: dict[str, dict[JobState, int]] = {}
        for queue, states in sorted(self.counts.items()):
            sums = by_label.setdefault(self._labels(queue), {})
            for state in JobState:
                sums[state] = sums.get(state, 0) + states.get(state, 0)
        for label, sums in by_label.items():
            for state in JobState:
                depth.add_metric([label, state.value], float(sums[state]))
        yield depth
        slots = GaugeMetricFamily(
            "offload_worker_slots",
            "Slots of the embedded workers, by state (busy or idle).",
            labels=["state"],
        )
        workers = self._workers()
        slots.add_metric(["busy"], float(sum(w.busy for w in workers)))
        slots.add_metric(["idle"], float(sum(w.idle for w in workers)))
        yield slots
        up = GaugeMetricFamily("offload_backend_up", "1 if the last scrape reached the backend.")
        up.add_metric([], float(self.backend_up))
        yield up


class Metrics:
    """The service's metrics; also a WorkerListener for its embedded workers."""

    def __init__(
        self, workers: Callable[[], Sequence[Worker]] = list, known_queues: Iterable[str] = ()
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue_label = QueueLabels(known_queues)
        labels = ["task", "queue"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self.enqueued = counter("offload_jobs_enqueued", "Jobs stored through this service.")
        self.started = counter("offload_jobs_started", "Attempts started by embedded workers.")
        self.succeeded = counter("offload_jobs_succeeded", "Jobs that succeeded.")
        self.failed = counter("offload_jobs_failed", "Attempts that ended in an error.")
        self.retried = counter("offload_jobs_retried", "Failed attempts scheduled to run again.")
        self.dead = counter("offload_jobs_dead", "Jobs that went dead.")
        self.cancelled = counter("offload_jobs_cancelled", "Jobs the task itself cancelled.")
        self.wait_s = Histogram(
            "offload_job_wait_seconds",
            "From when a job was due to when a worker started it.",
            ["queue"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.run_s = Histogram(
            "offload_job_run_seconds",
            "Run time of one attempt.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_jobs = Histogram(
            "offload_http_enqueue_batch_jobs",
            "Jobs per backend enqueue call made by the HTTP group commit.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._snapshot = _Snapshot(workers, self.queue_label)
        self.registry.register(self._snapshot)

    # -- WorkerListener --------------------------------------------------------------------

    def job_started(self, job: JobRecord) -> None:
        queue = self.queue_label(job.queue)
        self.started.labels(job.task, queue).inc()
        if job.started_at is not None:
            self.wait_s.labels(queue).observe(max(0.0, job.started_at - job.run_at))

    def job_finished(self, job: JobRecord, outcome: Outcome, runtime_s: float) -> None:
        labels = (job.task, self.queue_label(job.queue))
        self.run_s.labels(*labels).observe(runtime_s)
        if isinstance(outcome, Succeeded):
            self.succeeded.labels(*labels).inc()
        elif isinstance(outcome, RetryAt):
            self.failed.labels(*labels).inc()
            self.retried.labels(*labels).inc()
        elif isinstance(outcome, Dead):
            self.failed.labels(*labels).inc()
            self.dead.labels(*labels).inc()
        elif isinstance(outcome, Cancelled):
            self.cancelled.labels(*labels).inc()
        elif isinstance(outcome, Snoozed):
            pass  # the attempt is given back: neither a success nor a failure

    # -- scraping --------------------------------------------------------------------------

    def render(self, counts: Mapping[str, Mapping[JobState, int]] | None) -> bytes:
        """The exposition text; ``counts`` None means the backend could not be read."""
        self._snapshot.backend_up = 0 if counts is None else 1
        self._snapshot.counts = counts or {}
        return generate_latest(self.registry)
