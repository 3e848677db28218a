"""Prometheus metrics of a worker: the job families as a hook, ``offload worker
--metrics-port`` alone and with ``--processes 2`` (one aggregated endpoint), scraped and
parsed with prometheus_client's text parser."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import urllib.request
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import offload
from offload.worker import Worker, WorkerConfig
from offload.worker.metrics import job_metrics
from tests.procs import children_of, run_cli, start_worker, stop, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return parse(answer.read().decode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_job_families_follow_each_attempt() -> None:
    metrics = job_metrics()
    async with offload.App("memory://") as app:

        @app.task(name="ok")
        async def ok() -> None: ...

        @app.task(name="bad", max_attempts=2, retry=offload.FixedBackoff(0))
        def bad() -> None:
            raise ValueError("no")

        await ok.aenqueue()
        await ok.aenqueue()
        await bad.aenqueue()
        config = WorkerConfig(concurrency=3, poll_s=0.05, burst=True)
        worker = Worker(app, config, listeners=[metrics])
        run = asyncio.create_task(worker.run())
        await worker.started.wait()
        started = parse(generate_latest(metrics.registry).decode())
        await asyncio.wait_for(run, 10)
    samples = parse(generate_latest(metrics.registry).decode())
    assert (
        value(started, "offload_worker_slots", state="busy")
        + value(started, "offload_worker_slots", state="idle")
        == 3
    )
    assert value(samples, "offload_jobs_total", task="ok", outcome="succeeded") == 2
    assert value(samples, "offload_jobs_total", task="bad", outcome="retried") == 1
    assert value(samples, "offload_jobs_total", task="bad", outcome="dead") == 1
    assert value(samples, "offload_job_duration_seconds_count", queue="default") == 4
    assert value(samples, "offload_enqueue_to_start_seconds_count", task="ok") == 2
    assert value(samples, "offload_worker_slots", state="busy") == 0
    assert value(samples, "offload_worker_slots", state="idle") == 0  # the worker stopped


def test_a_worker_serves_its_metrics(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    port = free_port()
    worker = start_worker(url, "--concurrency", "3", "--metrics-port", str(port))
    try:
        for i in range(3):
            assert run_cli(url, "enqueue", "add", "--args", f"[{i}, 1]").returncode == 0
        assert run_cli(url, "enqueue", "fail", "--args", '["x"]').returncode == 0

        def done() -> bool:
            try:
                samples = scrape(port)
            except OSError:
                return False  # not listening yet
            return value(samples, "offload_jobs_total", outcome="dead") == 1 and (
                value(samples, "offload_jobs_total", outcome="succeeded") == 3
            )

        wait_for(done, 30, "the jobs in the worker's metrics")
        samples = scrape(port)
        assert value(samples, "offload_worker_slots", state="idle") == 3
        assert value(samples, "offload_jobs_total", task="fail", outcome="retried") == 1
        assert value(samples, "offload_job_duration_seconds_count", task="add") == 3
        assert value(samples, "offload_queue_jobs", queue="default", state="succeeded") == 3
        assert value(samples, "offload_queue_jobs", queue="default", state="dead") == 1
        assert value(samples, "offload_backend_up") == 1
    finally:
        assert stop(worker) == 0


def test_two_processes_share_one_endpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    port = free_port()
    ledger = tmp_path / "ledger"
    supervisor = start_worker(
        url, "--processes", "2", "--concurrency", "2", "--metrics-port", str(port)
    )
    try:
        wait_for(lambda: len(children_of(supervisor.pid)) == 2, 30, "two worker processes")

        def slots() -> float:
            try:
                return value(scrape(port), "offload_worker_slots", state="idle")
            except OSError:
                return -1.0

        wait_for(lambda: slots() == 4, 30, "both children's slots")
        for i in range(20):
            args = f'{{"i": {i}, "ledger": "{ledger}", "sleep_s": 0.02}}'
            assert run_cli(url, "enqueue", "record", "--args", args).returncode == 0
        wait_for(
            lambda: value(scrape(port), "offload_jobs_total", outcome="succeeded") == 20,
            60,
            "20 jobs in the aggregated metrics",
        )
        samples = scrape(port)
        assert value(samples, "offload_job_duration_seconds_count", task="record") == 20
        assert value(samples, "offload_worker_slots", state="busy") == 0
        assert value(samples, "offload_queue_jobs", state="succeeded") == 20  # read once
        # A child killed outright is restarted; the counts of the dead one are kept.
        victim = children_of(supervisor.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: (
                victim not in children_of(supervisor.pid) and len(children_of(supervisor.pid)) == 2
            ),
            30,
            "the restarted child",
        )
        wait_for(lambda: slots() == 4, 30, "the slots of the live children only")
        assert value(scrape(port), "offload_jobs_total", outcome="succeeded") == 20
    finally:
        assert stop(supervisor) == 0


def test_the_metrics_options_are_documented(tmp_path: Path) -> None:
    out = run_cli(f"sqlite:///{tmp_path / 'x.db'}", "worker", "--help", app=None)
    assert "--metrics-port" in out.stdout and "--metrics-host" in out.stdout
    assert "--metrics-dir" not in out.stdout  # the supervisor's business only
