"""What the sqlite:// test modules share: job and claim builders, a factory of backends on
one per-test file, and the backend's threads."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Protocol

import pytest

from offload.backends.sqlite import SQLiteBackend
from offload.job import ClaimRequest, NewJob, new_job_id


class Factory(Protocol):
    def __call__(self, **options: object) -> Awaitable[SQLiteBackend]: ...


def job(queue: str = "q", **kw: object) -> NewJob:
    return NewJob(id=new_job_id(), task="t", queue=queue, args=b'{"x": 1}', **kw)  # type: ignore[arg-type]


def claim(
    queue: str = "q", limit: int = 10, worker: str = "w", lease_s: float = 30.0
) -> ClaimRequest:
    return ClaimRequest(queues=(queue,), limit=limit, worker_id=worker, lease_s=lease_s)


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[Factory]:
    opened: list[SQLiteBackend] = []

    async def make(**options: object) -> SQLiteBackend:
        backend = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db", **options)
        await backend.open()
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        await backend.close()


def offload_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("offload-sqlite")]


def open_fds_on(path: Path) -> list[str]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            fds.append(target)
    return fds
