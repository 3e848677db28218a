"""``offload serve``: the HTTP service with an embedded worker, as a real process."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.procs import ROOT, child_env, children_of, offload_cmd, run_cli, stop, wait_for

TOKEN_READ = "r" * 20
TOKEN_ADMIN = "a" * 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(
    url: str, port: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    cmd = offload_cmd(url, "serve", "tests.apps.basic:app", "--port", str(port), *extra)
    cmd += ["--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=ROOT, env={**child_env(), **(env or {})}, text=True)


def healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_with_embedded_workers_runs_jobs_and_stops_on_sigterm(tmp_path: Path) -> None:
    url, port = f"sqlite:///{tmp_path / 'serve.db'}", free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_serve(url, port, "--workers", "2")
    try:
        wait_for(lambda: healthy(base), 30, "the server to answer /healthz")
        resp = httpx.post(
            f"{base}/v1/jobs",
            json={"task": "add", "args": {"x": 2, "y": 3}},
            headers={"Prefer": "wait=10"},
            timeout=15,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["result"] == 5
        workers = httpx.get(f"{base}/v1/workers", timeout=5).json()
        assert any(w["concurrency"] == 2 for w in workers["workers"])
    finally:
        code = stop(proc, signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), code  # uvicorn re-raises the signal after a clean stop
    done = run_cli(url, "jobs", "list", "--state", "succeeded", "--json")
    assert done.returncode == 0 and '"add"' in done.stdout


def test_serve_takes_tokens_from_the_environment(tmp_path: Path) -> None:
    url, port = f"sqlite:///{tmp_path / 'serve.db'}", free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"OFFLOAD_TOKENS": f"{TOKEN_READ}=read;{TOKEN_ADMIN}=admin"}
    proc = start_serve(url, port, env=env)
    try:
        wait_for(lambda: healthy(base), 30, "the server to answer /healthz")
        assert httpx.get(f"{base}/v1/queues", timeout=5).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN_READ}"}
        assert httpx.get(f"{base}/v1/queues", headers=auth, timeout=5).status_code == 200
        body = {"task": "add", "args": {"x": 1}}
        assert httpx.post(f"{base}/v1/jobs", json=body, headers=auth, timeout=5).status_code == 403
        admin = {"Authorization": f"Bearer {TOKEN_ADMIN}"}
        assert httpx.post(f"{base}/v1/jobs", json=body, headers=admin, timeout=5).status_code == 202
    finally:
        stop(proc, signal.SIGTERM)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "without API tokens"),
        (["--queues", "a"], "--queues needs --workers"),
        (["--tokens", "short=read"], "16 characters"),
        (["--tokens", "x" * 20 + "=root"], "scopes"),
        (["--secret", "short"], "16 characters"),
    ],
)
def test_serve_refuses_bad_options_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_cli(f"sqlite:///{tmp_path / 'x.db'}", "serve", *args, timeout_s=30)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _login(base: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=5)
    page = client.get("/login")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    r = client.post("/login", data={"token": token, "csrf": found.group(1)})
    assert r.status_code == 303, r.text
    return client


def test_dashboard_sessions_survive_a_restart_with_the_same_secret(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    env = {"OFFLOAD_TOKENS": f"{TOKEN_READ}=read", "OFFLOAD_SECRET": "s" * 32}

    def serve_once(secret: str) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        proc = start_serve(url, port, env={**env, "OFFLOAD_SECRET": secret})
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(base), 30, "the server to answer /healthz")
        return proc, base

    proc, base = serve_once("s" * 32)
    try:
        client = _login(base, TOKEN_READ)
        assert client.get("/").status_code == 200
    finally:
        stop(proc, signal.SIGTERM)
    cookies = client.cookies
    for secret, expected in (("s" * 32, 200), ("t" * 32, 303)):
        proc, base = serve_once(secret)
        try:
            again = httpx.Client(base_url=base, timeout=5, cookies=cookies)
            assert again.get("/").status_code == expected
        finally:
            stop(proc, signal.SIGTERM)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def _dead(pid: int) -> bool:
    """Gone, or a zombie its supervisor has not reaped yet: either way it accepts nothing."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _replaced(parent: int, dead: int) -> bool:
    children = children_of(parent)
    return len(children) == 2 and dead not in children


def test_serve_processes_share_the_port_and_replace_a_dead_one(tmp_path: Path) -> None:
    url, port = f"sqlite:///{tmp_path / 'serve.db'}", free_port()
    base = f"http://127.0.0.1:{port}"
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# the admin\n{TOKEN_ADMIN}=admin\n")
    proc = start_serve(
        url, port, "--processes", "2", "--workers", "1", "--tokens-file", str(tokens_file)
    )
    auth = {"Authorization": f"Bearer {TOKEN_ADMIN}"}

    def added(y: int) -> int:
        # A new connection each time: any process may take it. It waits in the socket's
        # queue while no process accepts (one killed, its replacement starting).
        with httpx.Client(timeout=30) as client:
            resp = client.post(
                f"{base}/v1/jobs",
                json={"task": "add", "args": {"x": 1, "y": y}},
                headers={**auth, "Prefer": "wait=10"},
            )
        assert resp.status_code == 200, resp.text
        return int(resp.json()["result"])

    leftover: list[int] = []
    try:
        wait_for(lambda: len(children_of(proc.pid)) == 2, 30, "two server processes")
        wait_for(lambda: healthy(base), 30, "the server to answer /healthz")
        assert added(1) == 2
        wait_for(
            lambda: (
                len(httpx.get(f"{base}/v1/workers", headers=auth, timeout=5).json()["workers"]) == 2
            ),
            30,
            "both processes' embedded workers",
        )
        first, second = children_of(proc.pid)
        # What must agree across processes reaches each through its environment, not argv:
        # the tokens as the parent read them (a restarted child reads no changed file).
        secrets = {_environ(pid)["OFFLOAD_SECRET"] for pid in (first, second)}
        assert len(secrets) == 1 and len(secrets.pop()) >= 32
        assert all(
            _environ(pid)["OFFLOAD_TOKENS"] == f"{TOKEN_ADMIN}=admin" for pid in (first, second)
        )
        assert all(_environ(pid)["OFFLOAD_URL"] == url for pid in (first, second))
        cmdline = Path(f"/proc/{first}/cmdline").read_text()
        assert TOKEN_ADMIN not in cmdline and url not in cmdline and "tokens" not in cmdline
        # ... and once read, it is gone from the environment the jobs (and what they start) see.
        for name in ("OFFLOAD_SECRET", "OFFLOAD_TOKENS", "OFFLOAD_URL"):
            args = json.dumps([name])
            ran = run_cli(url, "enqueue", "has_env", "--args", args, "--wait", "30", "--json")
            assert ran.returncode == 0, ran.stderr
            assert json.loads(ran.stdout)["result"] is False, (name, ran.stdout)
        # Each process accepts on the shared socket: with one dead, the other answers alone.
        for victim in (first, second):
            os.kill(victim, signal.SIGKILL)
            wait_for(functools.partial(_dead, victim), 30, "the killed process to die")
            assert added(2) == 3
            wait_for(functools.partial(_replaced, proc.pid, victim), 30, "a new process")
        assert added(3) == 4
    finally:
        children = children_of(proc.pid)
        code = stop(proc, signal.SIGTERM)
        leftover = [pid for pid in children if not _dead(pid)]
        for pid in leftover:  # never leave a server behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert code == 0
    assert leftover == []
    assert not healthy(base)


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_processes_refuse_a_backend_of_one_process(command: str) -> None:
    result = run_cli("memory://", command, "--processes", "2", timeout_s=30)
    assert result.returncode != 0
    assert "--processes needs a backend that processes share" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_processes_refuse_an_open_host_before_starting_any(tmp_path: Path) -> None:
    result = run_cli(
        f"sqlite:///{tmp_path / 'x.db'}", "serve", "--host", "0.0.0.0", "-p", "2", timeout_s=30
    )
    assert result.returncode != 0
    assert "without API tokens" in result.stderr
    assert "Traceback" not in result.stderr and "server processes on" not in result.stderr
