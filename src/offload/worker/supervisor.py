"""Supervises P worker or server processes (``offload worker --processes P``, ``offload serve
--processes P``).

Each child is a plain ``offload worker`` (or ``offload serve``) process with one process. A
child that dies is restarted (with a growing pause if it keeps dying at once, so a broken app
does not spin). The first SIGTERM/SIGINT is passed on to every child, which drains within its
grace; a second one is passed on too, which makes the children stop at once. The supervisor
exits when all have.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

log = logging.getLogger("offload.worker.supervisor")

FAST_DEATH_S = 5.0  # a child that dies sooner than this after starting counts as crash-looping
MAX_PAUSE_S = 30.0


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it if the supervisor dies (even by
    SIGKILL), so a lost supervisor never leaves orphan workers. Elsewhere, a no-op."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Supervisor:
    """``env`` is the children's environment (this process's by default); ``on_exit(pid)`` is
    called once for each child that has exited (the metrics endpoint forgets its gauges);
    ``pass_fds`` stay open in every child (the servers' shared listening socket); ``kind``
    names the children in the log; ``again`` is the signal a second stop request sends (the
    one that makes a child stop at once); ``give_up_after`` children in a row that die at
    start end the supervision (None: restart them for ever)."""

    def __init__(
        self,
        child_argv: Sequence[str],
        processes: int,
        *,
        env: Mapping[str, str] | None = None,
        on_exit: Callable[[int], None] | None = None,
        pass_fds: Sequence[int] = (),
        kind: str = "worker",
        again: signal.Signals = signal.SIGTERM,
        give_up_after: int | None = None,
    ) -> None:
        self.child_argv = list(child_argv)
        self.pass_fds = tuple(pass_fds)
        self.kind = kind
        self.again = again
        self.give_up_after = give_up_after
        self._fast_deaths = 0  # children in a row that died sooner than FAST_DEATH_S
        self._pause = 0.0
        self.processes = processes
        self.env = dict(env) if env is not None else None
        self.on_exit = on_exit
        self.children: list[tuple[subprocess.Popen[bytes], float]] = []
        self.restarts = 0
        self._signals = 0
        self._told: set[int] = set()  # child pids already sent SIGTERM for this stop

    def _spawn(self) -> tuple[subprocess.Popen[bytes], float]:
        proc = subprocess.Popen(
            self.child_argv, preexec_fn=_die_with_parent, env=self.env, pass_fds=self.pass_fds
        )
        return proc, time.monotonic()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        for proc, _ in self.children:
            self._tell(proc, again=self._signals > 1)

    def _tell(self, proc: subprocess.Popen[bytes], *, again: bool = False) -> None:
        """SIGTERM a live child once per stop request; a second request sends ``again``, which
        makes it skip its grace."""
        if proc.poll() is None and (again or proc.pid not in self._told):
            self._told.add(proc.pid)
            proc.send_signal(self.again if again else signal.SIGTERM)

    def _exited(self, proc: subprocess.Popen[bytes]) -> None:
        if self.on_exit is not None:
            try:
                self.on_exit(proc.pid)
            except Exception:
                log.exception("clean-up after %s process %d failed", self.kind, proc.pid)

    def run(self) -> int:
        """Supervise until stopped (0), or until ``give_up_after`` children in a row died at
        start (1: the others are stopped)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.children = [self._spawn() for _ in range(self.processes)]
            code = 0
            while not self._signals and not code:
                time.sleep(0.2)
                for i, (proc, started) in enumerate(self.children):
                    if proc.poll() is None or self._signals:
                        continue
                    if not self._replace(i, proc, started):
                        code = 1
                        break
            # A child spawned while the signal was being handled missed it: tell it now.
            for proc, _ in self.children:
                self._tell(proc)
            for proc, _ in self.children:
                proc.wait()
                self._exited(proc)
            return code
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _replace(self, i: int, proc: subprocess.Popen[bytes], started: float) -> bool:
        """Start a child in place of ``proc``, which has exited (after a pause that grows while
        children die at start); False to give up instead."""
        lived = time.monotonic() - started
        self._fast_deaths = self._fast_deaths + 1 if lived < FAST_DEATH_S else 0
        if self.give_up_after is not None and self._fast_deaths >= self.give_up_after:
            log.error(
                "%s process %d exited with %s after %.1fs: %d in a row died at start; giving up",
                self.kind,
                proc.pid,
                proc.returncode,
                lived,
                self._fast_deaths,
            )
            return False
        self._exited(proc)
        self._pause = min(max(self._pause * 2, 0.5), MAX_PAUSE_S) if lived < FAST_DEATH_S else 0.0
        log.warning(
            "%s process %d exited with %s after %.1fs; restarting%s",
            self.kind,
            proc.pid,
            proc.returncode,
            lived,
            f" in {self._pause:.1f}s" if self._pause else "",
        )
        time.sleep(self._pause)
        if not self._signals:  # a stop that arrived during the pause: start nothing new
            self.children[i] = self._spawn()
            self.restarts += 1
        return True
