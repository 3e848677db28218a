"""Helpers for tests that run real ``offload`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def offload_cmd(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "offload", "--url", url, *args]


def run_cli(
    url: str, *args: str, app: str | None = "tests.apps.basic:app", timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    pre = ["--app", app] if app else []
    cmd = [sys.executable, "-m", "offload", *pre, "--url", url, *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=timeout_s,
        check=False,
    )


def start_worker(url: str, *extra: str, app: str = "tests.apps.basic:app") -> subprocess.Popen[str]:
    cmd = offload_cmd(url, "worker", app, "--log-level", "warning", *extra)
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(), text=True)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll an external condition (another process's progress); return seconds waited."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def ledger_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


def kill_all(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
