"""Worker processes as their users start them: launch, watch memory, stop. Standard library
only (Linux ``/proc``), so that both virtual environments can use it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
RSS_EVERY_S = 0.02


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass  # the process is gone
    return out


def tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants (a worker that forks its own
    worker processes is measured whole, as its user would pay for it)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
        except (OSError, ValueError, IndexError):
            continue
        todo.extend(_children(pid))
    return total


class Workers:
    """A set of worker processes of one system. Each runs in its own session so that stopping
    it reaches the processes it forked too."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []
        self._peaks: list[int] = []
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self, argv: Sequence[str], count: int, env: dict[str, str], cwd: Path) -> None:
        for _ in range(count):
            log = self._log_dir / f"worker-{len(self._logs)}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    list(argv),
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._procs.append(proc)
            self._logs.append(log)
            self._peaks.append(0)
        self._sampling.set()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while self._sampling.is_set():
            for i, proc in enumerate(self._procs):
                self._peaks[i] = max(self._peaks[i], tree_rss_bytes(proc.pid))
            time.sleep(RSS_EVERY_S)

    def peak_rss_bytes(self) -> int:
        """The largest resident size any one worker process (with its children) reached."""
        return max(self._peaks, default=0)

    def check_alive(self) -> None:
        """Raise if a worker process has exited: it cannot finish the run."""
        for proc, log in zip(self._procs, self._logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}: {tail(log)}")

    def stop(self, grace_s: float = 3.0) -> None:
        self._sampling.clear()
        if self._sampler is not None:
            self._sampler.join()
        for proc in self._procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # and whatever it forked, even if it exited
            proc.wait()
        self._procs, self._logs, self._peaks = [], [], []


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def tail(log: Path, lines: int = 6) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
