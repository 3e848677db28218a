"""An app with limited tasks, for tests that run real ``offload`` worker processes."""

from __future__ import annotations

import os
import time

import offload

app = offload.App("memory://")
RATE_PER_S = 20


@app.task(name="rated", rate_limit=f"{RATE_PER_S}/s")
def rated(i: int) -> int:
    return i


@app.task(name="per_account", concurrency_key="account", max_per_key=1)
def per_account(account: str, i: int) -> int:
    return i


@app.task(name="keyed_record", concurrency_key="account", max_per_key=1, max_attempts=5)
def keyed_record(account: str, i: int, ledger: str, sleep_s: float = 0.02) -> int:
    """Appends ``start <account> <i> <pid> <time>`` and, once done, ``end ...`` to the ledger
    (O_APPEND: concurrent writers never interleave lines)."""
    _write(ledger, f"start {account} {i} {os.getpid()} {time.time():.6f}\n")
    time.sleep(sleep_s)
    _write(ledger, f"end {account} {i} {os.getpid()} {time.time():.6f}\n")
    return i


def _write(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
