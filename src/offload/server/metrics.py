"""Prometheus metrics: the families of every process that runs jobs (:class:`JobMetrics`, a
hook, the same from ``offload serve`` and ``offload worker --metrics-port``), and those of one
service instance (:class:`Metrics`), each in a registry it owns (never the global one, so two
services in one process, or a test, never share counters).

:class:`JobMetrics`, the families a worker exports (standard names, seconds):

- ``offload_jobs_total{queue,task,outcome}``: attempts ended, by outcome: ``succeeded``,
  ``retried`` (failed, will run again), ``dead``, ``cancelled`` (by the task), ``snoozed``
  (given back: the task snoozed, or a stop past the grace released it), ``lost`` (the worker
  lost the lease: the job was cancelled, or another worker took it over).
- ``offload_job_duration_seconds{queue,task}``: run time of one attempt (histogram).
- ``offload_enqueue_to_start_seconds{queue,task}``: from when the job was due (enqueued, or
  its delay or retry time came) to when its attempt started, on the backend's clock.
- ``offload_worker_slots{state}``: slots of the workers of this process (all the processes of
  a supervised ``--processes N`` worker), ``busy`` or ``idle``.

Both also export, through :class:`QueueDepth`, the queue depth by state read from the backend
at each scrape (``offload_queue_jobs{queue,state}``: it covers every producer and worker) and
``offload_backend_up``.

:class:`Metrics` (``offload serve``) adds ``offload_jobs_enqueued`` (stored through this
service) and its older per-outcome counters (``offload_jobs_started``, ``_succeeded``, ``_failed``,
``_retried``, ``_dead``, ``_cancelled``, ``offload_job_wait_seconds``,
``offload_job_run_seconds``), kept for existing dashboards; new ones should use the families
above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from offload.hooks import Hook
from offload.job import JobRecord, JobState, LimitUsage
from offload.limits import family
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Snoozed, Succeeded, outcome_name

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from offload.worker import Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From "picked up at once" to "waited minutes": enqueue-to-start latency and run time.
LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# Distinct queue label values: each one is a time series in every scraper. Past this many,
# the rest are counted under OTHER_QUEUE (queue names come from stored jobs and from clients,
# not only from this app's tasks).
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


Counts = Mapping[str, Mapping[JobState, int]]


class QueueDepth(Collector):
    """Gauges computed at scrape time: queue depth by state and whether the backend answered.

    ``read`` (called at each scrape, from the scraping thread) returns the counts, or None when
    the backend could not be read; without it, the owner sets ``counts`` before each scrape.
    """

    def __init__(
        self, read: Callable[[], Counts | None] | None = None, labels: QueueLabels | None = None
    ) -> None:
        self._read = read
        self._labels = labels or QueueLabels()
        self.counts: Counts = {}
        self.backend_up = 1

    def collect(self) -> Iterable[Metric]:
        if self._read is not None:
            counts = self._read()
            self.backend_up = 0 if counts is None else 1
            self.counts = counts or {}
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
        up = GaugeMetricFamily("offload_backend_up", "1 if the last scrape reached the backend.")
        up.add_metric([], float(self.backend_up))
        yield up


class LimitJobs(Collector):
    """``offload_limit_jobs{queue, limit, state}``: jobs running under and waiting on each
    limit, from ``Backend.limit_usage``. The limit label is the bucket without its key value
    (``task:key:billing.charge:account``), so 10,000 accounts make one series, not 10,000."""

    def __init__(self, labels: QueueLabels) -> None:
        self._labels = labels
        self.usage: Sequence[LimitUsage] = ()

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "offload_limit_jobs",
            "Jobs running under (holding) and waiting on each rate or concurrency limit.",
            labels=["queue", "limit", "state"],
        )
        sums: dict[tuple[str, str, str], int] = {}
        for u in self.usage:
            at = (self._labels(u.queue), family(u.limit))
            for state, n in (("running", u.running), ("waiting", u.waiting)):
                sums[(*at, state)] = sums.get((*at, state), 0) + n
        for labels, n in sorted(sums.items()):
            gauge.add_metric(list(labels), float(n))
        yield gauge


class JobMetrics(Hook):
    """The job families (see the module's docstring), kept up to date as a hook.

    Add it to a worker (``Worker(app, listeners=[metrics])``) or to the app. The slot gauge
    sums over live processes in prometheus_client's multiprocess mode (``--processes N``).
    """

    def __init__(self, registry: CollectorRegistry, labels: QueueLabels | None = None) -> None:
        self.registry = registry
        self.queue_label = labels or QueueLabels()
        label_names = ["queue", "task"]
        self.jobs = Counter(
            "offload_jobs",
            "Attempts ended, by outcome.",
            [*label_names, "outcome"],
            registry=registry,
        )
        self.duration_s = Histogram(
            "offload_job_duration_seconds",
            "Run time of one attempt.",
            label_names,
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.enqueue_to_start_s = Histogram(
            "offload_enqueue_to_start_seconds",
            "From when a job was due to when its attempt started.",
            label_names,
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        slots = Gauge(
            "offload_worker_slots",
            "Worker slots, busy or idle.",
            ["state"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.busy, self.idle = slots.labels("busy"), slots.labels("idle")
        self.busy.set(0)
        self.idle.set(0)

    def worker_started(self, worker: Worker) -> None:
        self.idle.inc(worker.concurrency)

    def worker_stopped(self, worker: Worker) -> None:
        self.idle.dec(worker.concurrency)

    def before_run(self, job: JobRecord) -> None:
        self.busy.inc()
        self.idle.dec()
        if job.started_at is not None:
            waited = max(0.0, job.started_at - job.run_at)
            self.enqueue_to_start_s.labels(self.queue_label(job.queue), job.task).observe(waited)

    def after_run(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
        self.busy.dec()
        self.idle.inc()
        queue = self.queue_label(job.queue)
        self.duration_s.labels(queue, job.task).observe(runtime_s)
        self.jobs.labels(queue, job.task, outcome_name(outcome)).inc()


class Metrics(JobMetrics):
    """The service's metrics; also the hook of its embedded workers.

    ``workers`` is accepted for compatibility and unused: the slot gauge is kept by the hook.
    """

    def __init__(
        self, workers: Callable[[], Sequence[Worker]] = list, known_queues: Iterable[str] = ()
    ) -> None:
        super().__init__(CollectorRegistry(auto_describe=True), QueueLabels(known_queues))
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
        self._snapshot = QueueDepth(labels=self.queue_label)
        self.registry.register(self._snapshot)
        self._limits = LimitJobs(self.queue_label)
        self.registry.register(self._limits)

    # -- the hook, and the WorkerListener it used to be ------------------------------------

    def before_run(self, job: JobRecord) -> None:
        super().before_run(job)
        self.job_started(job)

    def after_run(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
        super().after_run(job, outcome, runtime_s)
        if outcome is not None:
            self.job_finished(job, outcome, runtime_s)

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

    def render(self, counts: Counts | None, limits: Sequence[LimitUsage] = ()) -> bytes:
        """The exposition text; ``counts`` None means the backend could not be read."""
        self._snapshot.backend_up = 0 if counts is None else 1
        self._snapshot.counts = counts or {}
        self._limits.usage = limits
        return generate_latest(self.registry)
