"""An app for tests that run real ``offload`` processes. Its URL comes from ``--url``.

``record`` appends ``<job id> <pid>`` to the ledger file named in its arguments, once per
execution start, with O_APPEND so concurrent writers never interleave lines.
"""

from __future__ import annotations

import os
import time

import offload

app = offload.App("memory://")


@app.task(name="add", expose=True)
def add(x: int, y: int = 0) -> int:
    return x + y


@app.task(name="record", max_attempts=5)
def record(i: int, ledger: str, sleep_s: float = 0.0) -> int:
    line = f"{i} {os.getpid()}\n".encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    if sleep_s:
        time.sleep(sleep_s)
    return i


@app.task(name="slow")
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@app.task(name="fail", max_attempts=2, retry=offload.FixedBackoff(0.0))
def fail(message: str) -> None:
    raise RuntimeError(message)


@app.task(name="has_env")
def has_env(name: str) -> bool:
    """Whether the process running the job has ``name`` in its environment."""
    return name in os.environ
