"""``offload jobs`` and friends as a user sees them: the JSON shape (the HTTP API's), the table
on a normal terminal, and ``jobs purge``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import offload
from offload.server import create_service
from tests.procs import ROOT, child_env, run_cli, start_worker


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def cli_json(url: str, *args: str) -> Any:
    out = run_cli(url, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def api_get(url: str, path: str) -> Any:
    service = create_service(offload.App(url), dashboard=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service), base_url="http://127.0.0.1"
    ) as client:
        r = await client.get(path)
    await service.state.offload.app.close()
    assert r.status_code == 200, r.text
    return r.json()


async def test_jobs_show_and_list_print_the_http_apis_shape(url: str) -> None:
    done = run_cli(url, "enqueue", "add", "--args", "[40, 2]").stdout.strip()
    worker = start_worker(url, "--burst")
    assert worker.wait(timeout=60) == 0
    waiting = run_cli(url, "enqueue", "add", "--args", '{"x": 1}', "--delay", "3600")
    waiting_id = waiting.stdout.strip()
    for job_id in (done, waiting_id):
        shown = cli_json(url, "jobs", "show", job_id)
        assert shown == await api_get(url, f"/v1/jobs/{job_id}")
    assert cli_json(url, "jobs", "show", done)["result"] == 42
    # RFC 3339 times in UTC, as the API gives them.
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
    assert stamp.match(cli_json(url, "jobs", "show", done)["finished_at"])
    assert cli_json(url, "jobs", "list") == await api_get(url, "/v1/jobs")


def test_jobs_list_never_cuts_an_id_on_an_80_column_terminal(url: str) -> None:
    ids = [
        run_cli(url, "enqueue", "add", "--args", "[1]", "--queue", "q" * 60).stdout.strip()
        for _ in range(2)
    ]
    run_cli(url, "jobs", "cancel", ids[0])  # an error column with text in it
    cmd = [sys.executable, "-m", "offload", "--app", "tests.apps.basic:app", "--url", url]
    env = {**child_env(), "COLUMNS": "80"}
    out = subprocess.run([*cmd, "jobs", "list"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    for job_id in ids:
        assert re.search(rf"(^|\s){job_id}(\s|$)", out.stdout, re.M), out.stdout
    assert "cancelled" in out.stdout and "queued" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80


def test_jobs_purge_deletes_final_jobs_by_state_queue_and_age(url: str) -> None:
    a = [run_cli(url, "enqueue", "add", "--args", "[1]").stdout.strip() for _ in range(3)]
    b = run_cli(url, "enqueue", "add", "--args", "[1]", "--queue", "other").stdout.strip()
    for job_id in [*a[:2], b]:
        run_cli(url, "jobs", "cancel", job_id)
    default = run_cli(url, "jobs", "purge")  # dead jobs only: there are none
    assert default.returncode == 0 and default.stdout.strip() == "deleted 0 jobs"
    recent = run_cli(url, "jobs", "purge", "--state", "cancelled", "--older-than", "1h")
    assert recent.stdout.strip() == "deleted 0 jobs"  # they finished seconds ago
    some = cli_json(url, "jobs", "purge", "--state", "cancelled", "--queue", "other")
    assert some == {"deleted": 1}
    rest = run_cli(url, "jobs", "purge", "--state", "cancelled", "--state", "dead")
    assert rest.returncode == 0 and rest.stdout.strip() == "deleted 2 jobs"
    left = cli_json(url, "jobs", "list")["jobs"]
    assert [j["id"] for j in left] == [a[2]] and left[0]["state"] == "queued"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "queued"], "Invalid value"),  # final states only
        (["--older-than", "soon"], "not a duration"),
    ],
)
def test_jobs_purge_refuses_what_it_cannot_do(url: str, args: list[str], message: str) -> None:
    out = run_cli(url, "jobs", "purge", *args)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr


def test_durations() -> None:
    from offload.cli.jobs import Duration

    parse = Duration().convert
    assert [parse(v, None, None) for v in ("90", "90s", "1.5m", "12h", "7d", "2w")] == [
        90.0,
        90.0,
        90.0,
        43200.0,
        604800.0,
        1209600.0,
    ]
