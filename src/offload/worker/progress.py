"""Progress of running jobs, written at a bounded rate.

``ctx.progress(...)`` may be called in a tight loop, from the worker's loop or a sync task's
thread; a write per call would make a chatty task the backend's busiest client. So a call only
records the latest value; :class:`ProgressWriter` writes what changed for every running job in
one ``set_progress`` batch, then waits ``interval_s`` before the next: at most one write per
job per interval, whatever the number of calls. When an attempt ends, its last unwritten value
is written before its outcome goes to the backend (``take``, ``write_final``), so the final
progress is kept.

A backend that keeps no job state (store-less RabbitMQ or Beanstalkd) refuses progress: the
first refusal is logged and later values are dropped. A backend that is down loses nothing
that matters: the next value or the next interval writes again.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from offload.backends.base import Backend
from offload.errors import BackendUnavailable, CapabilityUnavailable
from offload.job import Lease
from offload.worker.errorlog import FailureLog

log = logging.getLogger("offload.worker")

PROGRESS_EVERY_S = 1.0  # a person watching a progress bar sees it move; the backend barely does


class ProgressWriter:
    """The coalescing writer of one worker. ``report`` is safe from any thread."""

    def __init__(self, interval_s: float = PROGRESS_EVERY_S) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()  # sync tasks report from their own threads
        self._pending: dict[Lease, bytes] = {}
        self._due = asyncio.Event()
        self._backend: Backend | None = None  # set by run(): the worker's open backend
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refused = False
        self._told = False
        self._errors = FailureLog(log, "writing progress")
        self.writes = 0  # set_progress calls made (for tests)

    def report(self, lease: Lease, value: bytes) -> None:
        """Remember ``value`` as the job's latest progress; it is written within an interval."""
        loop = self._loop
        if self._refused:
            self._refuse(None)
            return
        if loop is None:
            return
        with self._lock:
            first = not self._pending
            self._pending[lease] = value
        if first:  # one wake-up per batch, not per call
            loop.call_soon_threadsafe(self._due.set)

    def forget(self, lease: Lease) -> None:
        """Drop the unwritten value of an attempt that ended without an outcome to apply."""
        with self._lock:
            self._pending.pop(lease, None)

    def take(self, lease: Lease) -> bytes | None:
        """The attempt's unwritten value, no longer pending (it is ending: the caller writes
        it with :meth:`write_final` before handing over the outcome)."""
        if not self._pending:  # the common case, without the lock: a job that never reported
            return None
        with self._lock:
            return self._pending.pop(lease, None)

    async def write_final(self, lease: Lease, value: bytes) -> None:
        await self._write([(lease, value)])

    def _refuse(self, exc: CapabilityUnavailable | None) -> None:
        """Say once that progress is dropped (a task may report thousands of times)."""
        if self._told:
            return
        self._told = True
        why = str(exc) if exc is not None else f"{type(self._backend).__name__} keeps no job state"
        log.warning("progress reports are dropped: %s", why)

    async def run(self, backend: Backend) -> None:
        """Write pending values to ``backend``, at most once per interval, until cancelled."""
        self._backend = backend
        self._refused = not backend.capabilities.progress
        self._loop = asyncio.get_running_loop()
        while True:
            await self._due.wait()
            self._due.clear()
            with self._lock:
                batch, self._pending = list(self._pending.items()), {}
            if batch:
                await self._write(batch)
            await asyncio.sleep(self._interval_s)  # the rate bound, not a poll

    async def _write(self, batch: list[tuple[Lease, bytes]]) -> None:
        if self._backend is None or self._refused:
            return
        try:
            self.writes += 1
            await self._backend.set_progress(batch)
        except CapabilityUnavailable as exc:
            self._refused = True
            self._refuse(exc)
        except BackendUnavailable as exc:
            self._errors.failed(exc)
        else:
            self._errors.succeeded()
