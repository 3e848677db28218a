"""Batches outcomes into few ``Backend.complete`` calls.

Outcomes pile up while one batch is being written, and the next write takes all of them: no
timer, so an idle worker writes at once and a busy one writes in big batches. A crash before a
flush only means a re-run (at-least-once), never a loss.
"""

from __future__ import annotations

import asyncio
import logging

from offload.backends.base import Backend
from offload.errors import BackendUnavailable
from offload.job import Lease
from offload.outcome import Outcome
from offload.worker.errorlog import FailureLog

log = logging.getLogger("offload.worker")

MAX_BATCH = 500
RETRY_MAX_S = 5.0


class Completer:
    def __init__(self, backend: Backend, *, retry_max_s: float = RETRY_MAX_S) -> None:
        self._backend = backend
        # The leases of finished jobs waiting here are no longer heartbeated: after an outage,
        # a retry that waited longer than a lease would find them put back (and run again).
        self._retry_max_s = retry_max_s
        self._pending: list[tuple[Lease, Outcome]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._errors = FailureLog(log, "recording outcomes")

    def add(self, lease: Lease, outcome: Outcome) -> None:
        self._pending.append((lease, outcome))
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Write batches until :meth:`close` and everything pending is written."""
        delay = 0.05
        while True:
            if not self._pending:
                self._idle.set()
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch = self._pending[:MAX_BATCH]
            try:
                await self._backend.complete(batch)
            except BackendUnavailable as exc:
                self._errors.failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            self._errors.succeeded()
            del self._pending[: len(batch)]
            delay = 0.05

    async def drain(self) -> None:
        """Wait until everything added so far is written."""
        await self._idle.wait()

    def close(self) -> None:
        """Let :meth:`run` return once the pending outcomes are written."""
        self._closing = True
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)
