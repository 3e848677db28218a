"""The offload command, run as a real process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import children_of, run_cli, start_worker, stop, wait_for


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def test_enqueue_then_inspect_and_steer(url: str) -> None:
    out = run_cli(url, "enqueue", "add", "--args", '{"x": 2, "y": 3}')
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    shown = json.loads(run_cli(url, "jobs", "show", job_id, "--json").stdout)
    assert shown["id"] == job_id and shown["state"] == "queued"
    assert shown["args"] == {"x": 2, "y": 3}
    listed = json.loads(run_cli(url, "jobs", "list", "--state", "queued", "--json").stdout)
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    queues = json.loads(run_cli(url, "queues", "--json").stdout)
    assert queues["default"]["queued"] == 1
    cancelled = json.loads(run_cli(url, "jobs", "cancel", job_id, "--json").stdout)
    assert cancelled["state"] == "cancelled"
    retried = json.loads(run_cli(url, "jobs", "retry", job_id, "--json").stdout)
    assert retried["state"] == "queued"
    table = run_cli(url, "jobs", "list")
    assert job_id in table.stdout and "queued" in table.stdout


def test_positional_args_options_and_wait(url: str) -> None:
    worker = start_worker(url, "--concurrency", "2")
    try:
        out = run_cli(
            url, "enqueue", "add", "--args", "[40, 2]", "--priority", "5", "--wait", "30", "--json"
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["result"] == 42
    finally:
        assert stop(worker) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "add", "--args", "{bad json"], "not valid JSON"),
        (["enqueue", "add", "--args", '{"x": "two"}'], "invalid argument 'x'"),
        (["enqueue", "add", "--args", '"text"'], "object or array"),
        (["enqueue", "nope"], "no task named 'nope'"),
        (["enqueue", "add", "--args", "{}", "--priority", "99"], "priority"),
        (["jobs", "show", "missing"], "no job with id"),
        (["jobs", "retry", "missing"], "no job with id"),
        (["jobs", "list", "--state", "weird"], "Invalid value"),
    ],
)
def test_errors_are_one_line_without_traceback(url: str, args: list[str], message: str) -> None:
    out = run_cli(url, *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout


def test_a_bad_app_or_url_is_a_clear_error(url: str) -> None:
    for app, text in [
        ("nomodule:app", "cannot import"),
        ("tests.apps.basic:nothing", "not an"),
        ("justmodule", "module:attr"),
    ]:
        out = run_cli(url, "queues", app=app)
        assert out.returncode != 0 and text in out.stderr and "Traceback" not in out.stderr
    out = run_cli("mongo://x", "queues")
    assert out.returncode != 0 and "unknown backend URL scheme" in out.stderr
    out = run_cli(url, "queues", app=None)
    assert out.returncode != 0 and "OFFLOAD_APP" in out.stderr


def test_help_names_the_environment_variables(url: str) -> None:
    out = run_cli(url, "--help", app=None)
    assert "OFFLOAD_APP" in out.stdout and "OFFLOAD_URL" in out.stdout


def test_worker_exits_zero_on_sigterm_and_on_sigint(url: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        worker = start_worker(url)
        # A job that finishes proves the worker is up (its signal handlers come first).
        out = run_cli(url, "enqueue", "add", "--args", "[1]", "--wait", "30")
        assert out.returncode == 0, out.stderr
        assert stop(worker, sig) == 0


def test_supervisor_restarts_a_dead_process_and_stops_cleanly(url: str) -> None:
    sup = start_worker(url, "--processes", "2", "--grace", "5")
    try:
        wait_for(lambda: len(children_of(sup.pid)) == 2, 30, "two worker processes")
        victim = children_of(sup.pid)[0]
        # --url (it may hold a password) reaches them through the environment, not argv
        assert url not in Path(f"/proc/{victim}/cmdline").read_text()
        assert f"OFFLOAD_URL={url}\0".encode() in Path(f"/proc/{victim}/environ").read_bytes()
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: len(children_of(sup.pid)) == 2 and victim not in children_of(sup.pid),
            30,
            "the dead process to be replaced",
        )
        out = run_cli(url, "enqueue", "add", "--args", "[1, 1]", "--wait", "30", "--json")
        assert json.loads(out.stdout)["result"] == 2
    finally:
        children = children_of(sup.pid)
        code = stop(sup)
        for pid in children:  # never leave a worker behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert code == 0
    assert children_of(sup.pid) == []


def test_workers_die_with_a_killed_supervisor(url: str) -> None:
    sup = start_worker(url, "--processes", "2")
    wait_for(lambda: len(children_of(sup.pid)) == 2, 30, "two worker processes")
    children = children_of(sup.pid)
    sup.kill()
    sup.wait()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_for(lambda: all(gone(p) for p in children), 30, "the orphans to exit")
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_migrate_brings_a_postgres_schema_up_to_date_with_only_a_url() -> None:
    from tests.services import (
        POSTGRES_HOST,
        POSTGRES_PORT,
        POSTGRES_URL,
        drop_postgres_schema,
        require_port,
        unique_name,
    )

    require_port("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    schema = unique_name("test_cli_migrate")
    url = f"{POSTGRES_URL}?schema={schema}"
    try:
        before = run_cli(url, "queues")
        assert before.returncode != 0 and "offload migrate" in before.stderr
        out = run_cli(url, "migrate", app=None)  # as docs/postgres.md says: no app needed
        assert out.returncode == 0, out.stderr
        assert "schema up to date (" in out.stdout and "0 migrations" not in out.stdout
        again = run_cli(url, "migrate")  # with an app too, and nothing left to do
        assert again.returncode == 0 and "(0 migrations applied)" in again.stdout
        assert run_cli(url, "queues", "--json").stdout.strip() == "{}"
    finally:
        drop_postgres_schema(schema)


def test_migrate_without_an_app_or_a_url_says_what_it_needs() -> None:
    from tests.procs import ROOT, child_env

    cmd = [sys.executable, "-m", "offload", "migrate"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
    assert out.returncode != 0 and "OFFLOAD_URL" in out.stderr and "Traceback" not in out.stderr


def test_migrate_on_a_backend_without_migrations(url: str) -> None:
    out = run_cli(url, "migrate")
    assert out.returncode == 0 and "needs no migrations" in out.stdout


def test_burst_worker_runs_what_is_due_then_exits(url: str) -> None:
    ids = [run_cli(url, "enqueue", "add", "--args", f"[{i}, 1]").stdout.strip() for i in range(3)]
    worker = start_worker(url, "--burst", "--lease", "3")  # heartbeat defaults to lease / 3
    assert worker.wait(timeout=60) == 0
    for job_id, expected in zip(ids, (1, 2, 3), strict=True):
        shown = json.loads(run_cli(url, "jobs", "show", job_id, "--json").stdout)
        assert shown["state"] == "succeeded" and shown["result"] == expected
