"""In-process waiters woken by notifications: idle workers (per queue) and result waiters
(per job id). Used from one event loop only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class WorkWaiters:
    def __init__(self) -> None:
        self._waiters: list[tuple[frozenset[str], asyncio.Future[None]]] = []

    @contextlib.contextmanager
    def register(self, queues: Sequence[str]) -> Iterator[asyncio.Future[None]]:
        entry = (frozenset(queues), asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            yield entry[1]
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def wake_queue(self, queue: str) -> None:
        for queues, fut in self._waiters:
            if queue in queues:
                _resolve(fut)

    def wake_all(self) -> None:
        for _, fut in self._waiters:
            _resolve(fut)


class DoneWaiters:
    def __init__(self) -> None:
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    @contextlib.contextmanager
    def register(self, job_id: str) -> Iterator[asyncio.Future[None]]:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        try:
            yield fut
        finally:
            futs = self._waiters.get(job_id, [])
            with contextlib.suppress(ValueError):
                futs.remove(fut)
            if not futs:
                self._waiters.pop(job_id, None)

    def wake_ids(self, payload: str) -> None:
        """``payload`` is a comma-separated list of job ids that reached a final state."""
        for job_id in payload.split(","):
            for fut in self._waiters.get(job_id, ()):
                _resolve(fut)

    def wake_all(self) -> None:
        for futs in self._waiters.values():
            for fut in futs:
                _resolve(fut)
