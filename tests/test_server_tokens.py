"""``offload serve``'s API tokens: from a file or the environment, with a warning when they
are on the command line (where ``ps`` shows them to every user of the machine)."""

from __future__ import annotations

from pathlib import Path

import httpx

ADMIN = "admin-token-0123456789"
READER = "reader-token-0123456789"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_on_the_command_line_warn_and_a_tokens_file_is_read(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from offload.cli.main import main

    path = tmp_path / "tokens"
    path.write_text(f"# who may do what\n{READER}=read\n{ADMIN}=admin;\n")
    runner = CliRunner()
    # --secret too short stops the command after the tokens are read, before serving.
    base = ["--url", "memory://", "serve", "tests.apps.basic:app", "--secret", "short"]
    r = runner.invoke(main, [*base, "--tokens", f"{READER}=read"])
    assert r.exit_code == 2 and "visible to every user" in r.output
    r = runner.invoke(main, base, env={"OFFLOAD_TOKENS": f"{READER}=read"})
    assert r.exit_code == 2 and "visible to every user" not in r.output
    r = runner.invoke(main, [*base, "--tokens-file", str(path)])
    assert r.exit_code == 2 and "visible" not in r.output
    bad = tmp_path / "bad"
    bad.write_text("no-scopes-here\n")
    r = runner.invoke(main, [*base, "--tokens-file", str(bad)])
    assert r.exit_code == 1 and "TOKEN=scope" in r.output


def test_serve_reads_its_tokens_from_a_file(tmp_path: Path) -> None:
    """A real ``offload serve``: the tokens work and are not on its command line."""
    import signal
    import socket
    import subprocess

    from tests.procs import ROOT, child_env, offload_cmd, stop, wait_for

    path = tmp_path / "tokens"
    path.write_text(f"{READER}=read\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    cmd = offload_cmd(url, "serve", "tests.apps.basic:app", "--port", str(port))
    cmd += ["--tokens-file", str(path), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), text=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 30, "the server to answer /healthz")
        assert httpx.get(f"{base}/v1/queues", timeout=5).status_code == 401
        r = httpx.get(f"{base}/v1/queues", headers=bearer(READER), timeout=5)
        assert r.status_code == 200
        assert READER.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        big = httpx.get(f"{base}/healthz", headers={"X-Big": "a" * 100_000}, timeout=5)
        assert big.status_code == 431
    finally:
        stop(proc, signal.SIGTERM)
