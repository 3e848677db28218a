"""The worker's background duties: heartbeats (extend leases, report liveness) and recovery
(put back jobs whose lease expired, from any worker, so a lost job waits seconds, not hours)."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from offload.backends.base import Backend
from offload.errors import BackendUnavailable
from offload.worker.errorlog import FailureLog
from offload.worker.schedules import Scheduler

if TYPE_CHECKING:
    from offload.worker.worker import Worker

log = logging.getLogger("offload.worker")

RETENTION_EVERY_S = 60.0


class Maintenance:
    def __init__(self, worker: Worker, backend: Backend) -> None:
        self._worker = worker
        self._backend = backend
        self._stop = asyncio.Event()
        self._beat_errors = FailureLog(log, "heartbeat")
        self._recover_errors = FailureLog(log, "recovering expired leases")
        self._maintenance_errors = FailureLog(log, "maintenance")

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await asyncio.gather(
            self._heartbeat_loop(),
            self._recover_loop(),
            self._retention_loop(),
            self._schedules_loop(),
        )

    async def _schedules_loop(self) -> None:
        # Every worker runs the scheduler (the tick keys make that safe); a burst worker, which
        # ends when its queues are empty, does not.
        schedules = list(self._worker.app.schedules.values())
        if schedules and not self._worker.config.burst:
            await Scheduler(schedules, self._backend, hooks=self._worker.hooks).run(self._stop)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when it is time to stop."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _heartbeat_loop(self) -> None:
        cfg = self._worker.config
        while True:
            await self._beat(cfg.lease_s, cfg.heartbeat_s)
            if await self._sleep(cfg.heartbeat_s):
                return

    async def _beat(self, lease_s: float, heartbeat_s: float) -> None:
        worker = self._worker
        try:
            await self._backend.report_worker(worker.info(), ttl_s=heartbeat_s * 3)
            leases = worker.leases()
            if leases:
                held = await self._backend.heartbeat(leases, lease_s)
                lost = {lease.job_id for lease in leases} - held
                if lost:
                    worker.lease_lost(lost)
        except BackendUnavailable as exc:
            self._beat_errors.failed(exc)
        else:
            self._beat_errors.succeeded()

    async def _recover_loop(self) -> None:
        cfg = self._worker.config
        # Spread the first run so a fleet started together does not reap in lock step.
        if await self._sleep(random.uniform(0, min(cfg.recover_s, 1.0))):
            return
        while True:
            try:
                n = await self._backend.recover()
                self._recover_errors.succeeded()
                if n:
                    log.warning("put back %d jobs whose worker was lost", n)
            except BackendUnavailable as exc:
                self._recover_errors.failed(exc)
            if await self._sleep(cfg.recover_s * random.uniform(0.8, 1.2)):
                return

    async def _retention_loop(self) -> None:
        """Retention and other housekeeping, about once a minute (jittered across workers)."""
        while not await self._sleep(RETENTION_EVERY_S * random.uniform(0.5, 1.5)):
            try:
                n = await self._backend.run_maintenance()
                self._maintenance_errors.succeeded()
                if n:
                    log.info("deleted %d finished jobs past their retention", n)
            except BackendUnavailable as exc:
                self._maintenance_errors.failed(exc)

    async def deregister(self) -> None:
        try:
            await self._backend.remove_worker(self._worker.id)
        except BackendUnavailable as exc:
            log.warning("could not deregister worker: %s", exc)
