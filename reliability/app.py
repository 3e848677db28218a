"""The tasks the harness runs, in worker processes started with ``reliability.app:app``.

Every execution appends to the ledger named in its arguments, with O_APPEND so lines written by
concurrent processes never interleave: ``S <i> <pid> <time>`` when it starts and
``F <i> <pid> <time>`` when its body has finished (before the worker records the outcome).
"""

from __future__ import annotations

import os
import time

import offload

MAX_ATTEMPTS = 20  # a job killed under its worker many times in a storm must still finish
POISON_ATTEMPTS = 3


def note(ledger: str, kind: str, i: int) -> None:
    """Append one ledger line (one write call, so it is atomic)."""
    line = f"{kind} {i} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def make_app(url: str) -> offload.App:
    """An app with the harness's tasks, bound to ``url``."""
    app = offload.App(url)

    @app.task(name="record", max_attempts=MAX_ATTEMPTS, retry=offload.FixedBackoff(0.1))
    def record(i: int, ledger: str, sleep_s: float = 0.0) -> dict[str, int]:
        """Note the start, sleep, note the finish; the result names the process that ran it."""
        note(ledger, "S", i)
        if sleep_s:
            time.sleep(sleep_s)
        note(ledger, "F", i)
        return {"i": i, "pid": os.getpid()}

    @app.task(name="poison", max_attempts=POISON_ATTEMPTS, retry=offload.FixedBackoff(0.1))
    def poison(i: int, ledger: str) -> None:
        """Kill the process running it, every time."""
        note(ledger, "S", i)
        os._exit(1)

    @app.task(name="wf_step", max_attempts=MAX_ATTEMPTS, retry=offload.FixedBackoff(0.1))
    def wf_step(done: list[int], i: int, ledger: str, sleep_s: float = 0.0) -> list[int]:
        """A workflow step: the steps before it (the previous step's result), then itself."""
        note(ledger, "S", i)
        if sleep_s:
            time.sleep(sleep_s)
        note(ledger, "F", i)
        return [*done, i]

    return app


# The target of ``offload worker reliability.app:app --url ...`` (the CLI applies the URL).
app = make_app("memory://")
