"""The service on a real uvicorn: over TCP in a thread, and ``run_server`` in a child process
(startup, an enqueue answered by the embedded worker, graceful stop on SIGTERM)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import offload
from offload.errors import ConfigurationError
from offload.server import create_service, run_server
from tests.procs import child_env


@contextlib.contextmanager
def serve_in_thread(service: Any) -> Iterator[str]:
    """Run ``service`` on uvicorn in a thread (its own event loop); yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(service, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    # uvicorn leaves signal handling alone outside the main thread.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def test_real_server_enqueues_and_waits(tmp_path: Path) -> None:
    app = offload.App(f"sqlite:///{tmp_path / 'jobs.db'}")

    @app.task(name="double", expose=True)
    def double(n: int) -> int:
        return 2 * n

    service = create_service(app, workers=2)
    with serve_in_thread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        r = client.post(
            "/v1/jobs", json={"task": "double", "args": {"n": 21}}, headers={"Prefer": "wait=5"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["result"] == 42
        assert r.headers["preference-applied"] == "wait=5"
        r = client.get(r.headers["location"])
        assert r.json()["state"] == "succeeded"
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/jobs", content=b"nope").status_code == 415


def test_run_server_refuses_an_open_non_loopback_host() -> None:
    app = offload.App("memory://")
    with pytest.raises(ConfigurationError, match="without API tokens"):
        run_server(app, "0.0.0.0", 0)


@pytest.mark.timeout(20, method="thread")  # missed check: it would serve until stopped
def test_run_server_on_a_socket_checks_the_address_it_listens_on() -> None:
    # A --processes child is told --host; what is exposed is the socket it was handed.
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        with pytest.raises(ConfigurationError, match="without API tokens"):
            run_server(offload.App("memory://"), fd=os.dup(sock.fileno()), switch_interval_s=None)


def test_run_server_refuses_a_descriptor_that_is_no_socket(tmp_path: Path) -> None:
    with open(tmp_path / "file", "w") as f:
        fd = os.dup(f.fileno())
        try:
            with pytest.raises(ConfigurationError, match="not an open socket"):
                run_server(offload.App("memory://"), fd=fd, switch_interval_s=None)
        finally:
            os.close(fd)  # refused: nothing took it over


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_run_server_in_a_process_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "svcapp.py").write_text(
        textwrap.dedent(
            f"""
            import offload
            app = offload.App("sqlite:///{tmp_path / "jobs.db"}")

            @app.task(name="hello", expose=True)
            def hello(name: str) -> str:
                return "hello " + name

            @app.task(name="slow", expose=True)
            def slow(seconds: float) -> str:
                import time
                time.sleep(seconds)
                return "done"
            """
        )
    )
    port = _free_port()
    code = (
        "import svcapp; from offload.server import run_server; "
        f"run_server(svcapp.app, '127.0.0.1', {port}, workers=2, log_level='warning')"
    )
    env = child_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env.get('PYTHONPATH', '')}"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.05)
        r = httpx.post(
            url + "/v1/jobs",
            json={"task": "hello", "args": {"name": "world"}},
            headers={"Prefer": "wait=10"},
            timeout=15,
        )
        assert r.status_code == 200 and r.json()["result"] == "hello world", r.text
        r = httpx.post(url + "/v1/jobs", json={"task": "slow", "args": {"seconds": 0.5}})
        assert r.status_code == 202
        job_url = url + r.headers["location"]
        while httpx.get(job_url).json()["state"] != "running":
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once its shutdown (our lifespan) has completed
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert proc.stderr is not None
        assert "no API tokens configured" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The embedded worker drained: the running job finished before the process ended.
    app = offload.App(f"sqlite:///{tmp_path / 'jobs.db'}")
    job = app.get_job(job_url.rsplit("/", 1)[1])
    assert job.state == offload.JobState.SUCCEEDED
    app.close_sync()
