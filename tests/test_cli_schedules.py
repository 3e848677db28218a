"""``offload schedules``: list (table and JSON), pause and resume."""

from __future__ import annotations

import json
from pathlib import Path

from tests.procs import run_cli

APP = "tests.apps.scheduled:app"


def test_list_pause_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    out = run_cli(url, "schedules", app=APP)
    assert out.returncode == 0, out.stderr
    assert "beat" in out.stdout and "every 1s" in out.stdout and "active" in out.stdout
    assert run_cli(url, "schedules", "pause", "beat", app=APP).stdout.strip() == "beat paused"
    (row,) = json.loads(run_cli(url, "schedules", "--json", app=APP).stdout)["schedules"]
    assert (row["name"], row["task"], row["paused"], row["next_run_at"]) == (
        "beat",
        "beat",
        True,
        None,
    )
    assert run_cli(url, "schedules", "resume", "beat", app=APP).returncode == 0
    (row,) = json.loads(run_cli(url, "schedules", "list", "--json", app=APP).stdout)["schedules"]
    assert row["paused"] is False and row["next_run_at"] > 0
    missing = run_cli(url, "schedules", "pause", "nope", app=APP)
    assert missing.returncode != 0 and "no schedule named 'nope'" in missing.stderr
