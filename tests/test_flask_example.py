"""examples/flask end to end: a view enqueues through the extension's sync API, ``flask
offload worker`` (a real process, in the app's context) runs the job, the view shows it, and
offload's own commands answer under ``flask offload``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from flask import Flask

from tests.procs import ROOT, child_env


@pytest.fixture
def flask_app(sqlite_url: str) -> Iterator[Flask]:
    from examples.flask.app import create_app, jobs

    url = jobs.app.url
    yield create_app({"OFFLOAD_URL": sqlite_url})
    jobs.app.close_sync()
    jobs.app.use_url(url)


def flask_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env()
    env["FLASK_OFFLOAD_URL"] = url
    env["FLASK_WELCOME_FROM"] = "ops@example.org"  # the worker reads the app's own config
    cmd = [sys.executable, "-m", "flask", "--app", "examples.flask.app", "offload", *args]
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_signup_enqueues_the_worker_sends(flask_app: Flask, sqlite_url: str) -> None:
    client = flask_app.test_client()
    answer = client.post("/signup", data={"email": "ada@example.org"})
    assert answer.status_code == 202
    job_id = answer.get_json()["id"]
    assert client.get(f"/jobs/{job_id}").get_json()["state"] == "queued"

    done = flask_cli(sqlite_url, "worker", "--burst")
    assert done.returncode == 0, done.stderr
    shown = client.get(f"/jobs/{job_id}").get_json()
    assert shown == {
        "id": job_id,
        "state": "succeeded",
        "result": "ops@example.org welcomed ada@example.org",
    }

    listed = flask_cli(sqlite_url, "jobs", "show", job_id, "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"state": "succeeded"' in listed.stdout or '"state":"succeeded"' in listed.stdout
    assert client.get("/jobs/nope").status_code == 404


def test_init_app_for_factories() -> None:
    from offload.contrib.flask import Offload

    ext = Offload()
    app = Flask("factory")
    app.config["OFFLOAD_URL"] = "memory://"
    ext.init_app(app)
    assert app.extensions["offload"] is ext and ext.app.url == "memory://"
    assert "offload" in app.cli.commands
