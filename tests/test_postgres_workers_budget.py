"""64 real worker processes against one PostgreSQL, ``listen=shared``: one connection each,
within the default ``max_connections`` (100), and together they drain the jobs."""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import psycopg

import offload
from tests.procs import kill_all, ledger_lines, start_worker, wait_for
from tests.services import POSTGRES_URL, backend_url

# 64 interpreters on CI's 2 CPUs take ~20 s to start; OFFLOAD_BUDGET_PROCESSES lowers it
# for a quick local run (the per-process assertion is the same).
PROCESSES = int(os.environ.get("OFFLOAD_BUDGET_PROCESSES", "64"))
JOBS = 4 * PROCESSES


def _connections(
    conn: psycopg.Connection[tuple[int, int, int]], app_name: str
) -> tuple[int, int, int]:
    """(this schema's workers' connections, all connections, the server's usable limit)."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE application_name = %s), count(*),"
        " current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
        " FROM pg_stat_activity WHERE backend_type = 'client backend'",
        (app_name,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_64_workers_hold_one_connection_each(tmp_path: Path) -> None:
    with backend_url("postgres", tmp_path) as base:
        schema = base.split("schema=")[1].split("&")[0]
        app_name = f"offload:{schema}"  # the backend's default application_name
        app = offload.App(base + "&application_name=offload_test_producer")  # not counted

        @app.task(name="record")  # tests.apps.basic's, which the workers run
        def record(i: int, ledger: str, sleep_s: float = 0.0) -> int:
            raise AssertionError("runs in the worker processes only")

        app.run_sync(lambda b: b.counts())  # migrates the schema once, before the workers
        url = base.replace("&auto_migrate=1", "") + "&listen=shared"
        flags = ("--concurrency", "2", "--recover", "30", "--log-level", "error")
        with psycopg.connect(POSTGRES_URL, autocommit=True) as watch:
            procs = [start_worker(url, *flags) for _ in range(PROCESSES)]
            try:
                seen = [0]

                def sample() -> int:
                    ours, total, limit = _connections(watch, app_name)
                    seen[0] = max(seen[0], ours)
                    assert total <= limit
                    assert all(p.poll() is None for p in procs), "a worker exited"
                    return ours

                wait_for(lambda: sample() >= PROCESSES, 90, "every worker's connection")
                ledger = tmp_path / "ledger.txt"
                app.enqueue_many([record.prepare(i, str(ledger), 0.02) for i in range(JOBS)])
                wait_for(
                    lambda: sample() >= 0 and len(ledger_lines(ledger)) >= JOBS, 90, "the drain"
                )
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                assert all(p.wait(timeout=60) == 0 for p in procs)
            finally:
                kill_all(procs)
        app.close_sync()
    runs = collections.Counter(line.split()[0] for line in ledger_lines(ledger))
    assert len(runs) == JOBS and set(runs.values()) == {1}
    pids = {line.split()[1] for line in ledger_lines(ledger)}
    assert len(pids) >= PROCESSES // 4, f"only {len(pids)} of {PROCESSES} workers ran jobs"
    assert seen[0] == PROCESSES, f"{seen[0]} connections from {PROCESSES} worker processes"
