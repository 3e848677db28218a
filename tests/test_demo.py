"""The demo behind ``make run``: the batch with its progress bar, then the HTTP service."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.procs import ROOT, child_env, stop, wait_for
from tests.test_cli_serve import free_port, healthy


def test_demo_runs_its_batch_then_serves(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "examples/demo.py", "--jobs", "200", "--port", str(port)]
    cmd += ["--db", str(tmp_path / "demo.db")]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: healthy(base), 90, "the demo's server to answer /healthz")
        queues = {q["name"]: q for q in httpx.get(f"{base}/v1/queues", timeout=5).json()["queues"]}
        assert sum(queues["images"]["states"].values()) == 100
        assert queues["emails"]["states"]["succeeded"] == 100
        resp = httpx.post(
            f"{base}/v1/jobs",
            json={"task": "send_email", "args": {"to": "a@example.com", "subject": "hi"}},
            headers={"Prefer": "wait=10"},
            timeout=15,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["result"] == "sent 'hi' to a@example.com"
    finally:
        stop(proc, signal.SIGTERM)
    out = proc.stdout.read() if proc.stdout else ""
    assert "enqueued 200 jobs" in out
    assert "Traceback" not in out


def test_ctrl_c_stops_the_demo_quietly(tmp_path: Path) -> None:
    """Ctrl-C is how the demo ends: one line, "stopped", exit status 0, no traceback."""
    port = free_port()
    cmd = [sys.executable, "examples/demo.py", "--jobs", "20", "--port", str(port)]
    cmd += ["--db", str(tmp_path / "demo.db")]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), 90, "the demo to serve")
    finally:
        code = stop(proc, signal.SIGINT)
    out, err = proc.communicate()
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
    assert code == 0, err
    assert out.splitlines()[-1] == "stopped", out
