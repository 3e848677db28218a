"""In-process waiters woken by notifications: idle workers (per queue) and result waiters
(per job id). Used from one event loop only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@dataclass(slots=True)
class ClaimMark:
    """What a queue claim saw, so that the same caller's next ``wait_for_work`` can go straight
    to sleep instead of asking the database again whether work is due.

    The claim took every due row it could see unless it came back ``full``; any job that became
    due later was announced by a notification the listener counted after ``heard`` was read,
    or is a scheduled job due at ``next_at``. That holds only while the listener stays
    connected: ``epoch`` changes on every (re)connect, since notifications are lost while it is
    down. A mark serves one wait (``used``); a caller that waits again without claiming asks
    the database as before."""

    queues: frozenset[str]
    epoch: int
    heard: int
    full: bool
    next_at: float | None  # loop time the first scheduled job falls due; None: none scheduled
    used: bool = False


class WorkWaiters:
    def __init__(self) -> None:
        self._waiters: list[tuple[frozenset[str], asyncio.Future[None]]] = []
        # Notifications heard per queue, for the queues claimed from in this process only (so
        # the map stays as small as the set of queues this process serves).
        self._heard: dict[str, int] = {}
        self.epoch = 0  # bumped by wake_all: the listener (re)connected, counts are incomplete

    def heard(self, queues: Sequence[str]) -> int:
        """Notifications heard so far for ``queues``; starts counting queues it has not seen."""
        total = 0
        for queue in queues:
            total += self._heard.setdefault(queue, 0)
        return total

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
        if queue in self._heard:
            self._heard[queue] += 1
        for queues, fut in self._waiters:
            if queue in queues:
                _resolve(fut)

    def wake_all(self) -> None:
        self.epoch += 1
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
