"""Worker: claims at most as many jobs as it has free slots, runs them, records outcomes.

Lifecycle (soft stop, then hard stop, as River does):

1. ``run()`` opens the app's backend on this loop and starts the fetch loop, the completer
   and the maintenance loops (heartbeat, recovery of expired leases).
2. ``request_stop()`` (first SIGTERM/SIGINT): stop claiming; running jobs get ``grace_s`` to
   finish. When the grace ends, what is still running is cancelled and released back to the
   queue (``Snoozed(0)``: the attempt is given back).
3. ``request_stop(force=True)`` (second signal): skip what is left of the grace.
4. Outcomes are flushed, the worker is deregistered, the thread pool is shut down. Nothing is
   left behind: no task, thread or connection (the app is closed by whoever opened it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from offload.backends.base import Backend, ClaimOnWake
from offload.context import CURRENT, JobContext
from offload.errors import BackendUnavailable, ConfigurationError
from offload.hooks import Hook, Hooks
from offload.job import ClaimRequest, JobRecord, Lease, WorkerInfo
from offload.outcome import Outcome, Snoozed
from offload.worker.completer import RETRY_MAX_S, Completer
from offload.worker.errorlog import FailureLog
from offload.worker.executor import execute
from offload.worker.maintenance import Maintenance
from offload.worker.progress import ProgressWriter
from offload.worker.threads import TaskThreads

if TYPE_CHECKING:
    from offload.app import App

log = logging.getLogger("offload.worker")


class WorkerListener(Protocol):
    """Observer of a worker's jobs (metrics, tracing). Called on the worker's loop; keep fast.

    The older form of a hook (:class:`offload.hooks.Hook`), run as one after the app's hooks:
    ``job_started`` is ``before_run``; ``job_finished`` is ``after_run`` whenever there is an
    outcome (not when the lease was lost). A listener that is also a ``Hook`` is run as a hook.
    """

    def job_started(self, job: JobRecord) -> None: ...

    def job_finished(self, job: JobRecord, outcome: Outcome, runtime_s: float) -> None: ...


class _ListenerHook(Hook):
    def __init__(self, listener: WorkerListener) -> None:
        self.listener = listener

    def before_run(self, job: JobRecord) -> None:
        self.listener.job_started(job)

    def after_run(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
        if outcome is not None:
            self.listener.job_finished(job, outcome, runtime_s)


@dataclass(frozen=True)
class WorkerConfig:
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 10
    lease_s: float = 30.0
    heartbeat_s: float = 10.0
    grace_s: float = 25.0
    poll_s: float = 1.0  # fallback wake-up when the backend cannot notify
    recover_s: float = 5.0  # how often expired leases are looked for
    burst: bool = False  # stop once no job is due and none is running (scripts, CI, cron)

    def __post_init__(self) -> None:
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue")
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        if not 0 < self.heartbeat_s < self.lease_s:
            raise ConfigurationError("need 0 < heartbeat_s < lease_s")
        if self.grace_s < 0 or self.poll_s <= 0 or self.recover_s <= 0:
            raise ConfigurationError("grace_s must be >= 0, poll_s and recover_s > 0")


class Worker:
    def __init__(
        self,
        app: App,
        config: WorkerConfig | None = None,
        *,
        listeners: Sequence[WorkerListener | Hook] = (),
        worker_id: str | None = None,
    ) -> None:
        self.app = app
        self.config = config or WorkerConfig()
        self.listeners = list(listeners)
        host = socket.gethostname()
        self.id = worker_id or f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.host = host
        self.started_at = 0.0
        self.hooks = Hooks()  # the app's hooks, then the listeners: fixed when run() starts
        self._running: dict[str, tuple[asyncio.Task[None], Lease, JobContext]] = {}
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.jobs_done = 0
        self._lost: set[Lease] = set()  # leases the heartbeat found lost: outcomes dropped
        self._progress = ProgressWriter()  # ctx.progress(...) of running jobs, coalesced

    # -- observable state ------------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        return self.config.concurrency

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def idle(self) -> int:
        return self.config.concurrency - len(self._running)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            host=self.host,
            pid=os.getpid(),
            queues=self.config.queues,
            concurrency=self.config.concurrency,
            busy=self.busy,
            started_at=self.started_at,
        )

    def leases(self) -> list[Lease]:
        return [lease for _, lease, _ in self._running.values()]

    # -- control ---------------------------------------------------------------------------

    def request_stop(self, *, force: bool = False) -> None:
        """Stop claiming and drain (soft); ``force`` also ends the grace period now."""
        self._stop.set()
        self._slot_freed.set()  # a fetch loop waiting for a free slot sees the stop at once
        if force:
            self._force.set()

    async def stop(self, *, force: bool = False) -> None:
        self.request_stop(force=force)
        await self.stopped.wait()

    async def run(self) -> None:
        """Run until stopped. Opens the app's backend on this loop if it is not open."""
        backend, owned = await self.app.backend_here()
        self.started_at = time.time()
        self.hooks = self.app.hooks.plus(
            [ear if isinstance(ear, Hook) else _ListenerHook(ear) for ear in self.listeners]
        )
        self.hooks.worker_event(True, self)
        pool = TaskThreads(asyncio.get_running_loop(), self.config.concurrency, "offload-task")
        completer = Completer(backend, retry_max_s=min(self.config.heartbeat_s, RETRY_MAX_S))
        completer_task = asyncio.create_task(completer.run(), name="offload-completer")
        progress_task = asyncio.create_task(self._progress.run(backend), name="offload-progress")
        maintenance = Maintenance(self, backend)
        maint_task = asyncio.create_task(maintenance.run(), name="offload-maintenance")
        self.started.set()
        try:
            await self._fetch_loop(backend, pool, completer)
            await self._drain(completer)
        finally:
            await self._cancel_running(completer)
            progress_task.cancel()
            await _wait_quietly(progress_task, timeout_s=1.0)
            completer.close()
            await _wait_quietly(completer_task, timeout_s=10.0)
            maintenance.stop()
            await _wait_quietly(maint_task, timeout_s=5.0)
            await maintenance.deregister()
            # Threads still in a job here ran past the grace and their jobs were handed back:
            # waiting longer for them would only delay the exit.
            pool.shutdown(wait=not self._force.is_set(), timeout_s=_THREAD_JOIN_S)
            if owned:
                await backend.close()
            self.hooks.worker_event(False, self)
            self.stopped.set()

    # -- the fetch loop --------------------------------------------------------------------

    async def _fetch_loop(self, backend: Backend, pool: TaskThreads, completer: Completer) -> None:
        cfg = self.config
        backoff = 0.05
        errors = FailureLog(log, "claiming jobs")
        on_wake = backend if isinstance(backend, ClaimOnWake) else None
        claimed_in_wait = False  # the last wait claimed, and found fewer jobs than it asked
        while not self._stop.is_set():
            free = cfg.concurrency - len(self._running)
            if free <= 0:
                # request_stop sets this too: one wait, with no task made per wait (this runs
                # about once per claim while every slot is busy)
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            req = ClaimRequest(
                queues=cfg.queues, limit=free, worker_id=self.id, lease_s=cfg.lease_s
            )
            if claimed_in_wait:
                jobs: list[JobRecord] = []  # that claim took all there was: wait again
                claimed_in_wait = False
            else:
                try:
                    jobs = await backend.claim(req)
                except BackendUnavailable as exc:
                    errors.failed(exc)
                    await self._until(None, backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                errors.succeeded()
                backoff = 0.05
                for job in jobs:
                    self._start(job, pool, completer)
            if cfg.burst and not jobs and not self._running:
                if completer.pending == 0:
                    self.request_stop()
                    break
                await completer.drain()  # a retry due now may be among the pending outcomes
                continue
            if len(jobs) < free:
                # Jitter keeps many idle workers from polling in lock step.
                timeout = cfg.poll_s * random.uniform(0.8, 1.2)
                if on_wake is None:
                    waiter = asyncio.create_task(backend.wait_for_work(cfg.queues, timeout))
                    await self._until(None, None, also=waiter)
                    continue
                more = ClaimRequest(
                    queues=cfg.queues, limit=free - len(jobs), worker_id=self.id,
                    lease_s=cfg.lease_s,
                )  # fmt: skip
                claiming = asyncio.create_task(on_wake.wait_and_claim(more, timeout))
                await self._until(None, None, also=claiming)
                # Jobs it leased are started even when a stop ended the wait: they run in
                # the grace, as jobs claimed a moment before a stop do. A failed or cancelled
                # wait leased nothing we know of; the next claim says how the backend is.
                if claiming.done() and not claiming.cancelled() and not claiming.exception():
                    woken = claiming.result()
                    if woken is not None:  # None: it made no claim, the next turn does
                        for job in woken:
                            self._start(job, pool, completer)
                        claimed_in_wait = len(woken) < more.limit

    async def _until(
        self,
        event: asyncio.Event | None,
        timeout_s: float | None,
        *,
        also: asyncio.Task[Any] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Wait for ``event``, ``also``, the timeout or ``stop`` (the stop request by default),
        whichever comes first."""
        stop_event = stop if stop is not None else self._stop
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(stop_event.wait())]
        if event is not None:
            waits.append(asyncio.ensure_future(event.wait()))
        if also is not None:
            waits.append(also)  # type: ignore[arg-type]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _start(self, job: JobRecord, pool: TaskThreads, completer: Completer) -> None:
        lease = Lease(job_id=job.id, worker_id=self.id, attempt=job.attempt)
        ctx = JobContext(job, self.id, self._progress, lease)
        task = asyncio.create_task(self._run_job(job, lease, ctx, pool, completer))
        self._running[job.id] = (task, lease, ctx)

    async def _run_job(
        self,
        job: JobRecord,
        lease: Lease,
        ctx: JobContext,
        pool: TaskThreads,
        completer: Completer,
    ) -> None:
        CURRENT.set(ctx)  # this asyncio task's own context: the task and its hooks see it
        hooks = self.hooks
        hooks.starting(job)
        t0 = time.perf_counter()
        outcome: Outcome | None = None
        try:
            outcome = await execute(self.app, job, pool, ctx)
            last = self._progress.take(lease)
            if last is not None:  # before the outcome: once it is applied the lease is gone
                await self._progress.write_final(lease, last)
        except asyncio.CancelledError:
            # Shutdown past the grace, or the lease was lost: give the job back unless lost.
            outcome = Snoozed(delay_s=0.0)
            self._progress.take(lease)
            raise
        finally:
            self._running.pop(job.id, None)
            self._slot_freed.set()
            if lease in self._lost:
                self._lost.discard(lease)  # (the job may come back to this worker: a new lease)
                outcome = None
            if outcome is not None:
                completer.add(lease, outcome)
            hooks.ended(job, outcome, time.perf_counter() - t0)
        if outcome is not None:
            self.jobs_done += 1

    def lease_lost(self, job_ids: set[str]) -> None:
        """Called by the heartbeat: these jobs are no longer ours; stop them, drop outcomes."""
        for job_id in job_ids:
            entry = self._running.get(job_id)
            if entry is not None:
                log.warning("lease lost for job %s; stopping it", job_id)
                self._lost.add(entry[1])
                entry[2].stop("the job was cancelled or its lease was lost")
                entry[0].cancel()

    # -- shutdown --------------------------------------------------------------------------

    async def _drain(self, completer: Completer) -> None:
        """Give running jobs until the grace ends (or a forced stop) to finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace_s
        if self._running:
            log.info("waiting up to %.1fs for %d running jobs", self.config.grace_s, self.busy)
        while self._running and not self._force.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            self._slot_freed.clear()
            await self._until(self._slot_freed, left, stop=self._force)

    async def _cancel_running(self, completer: Completer) -> None:
        entries = list(self._running.values())
        if entries:
            log.warning("releasing %d unfinished jobs back to their queues", len(entries))
        for t, _, ctx in entries:
            ctx.stop("the worker is stopping")
            t.cancel()
        tasks = [t for t, _, _ in entries]
        await asyncio.gather(*tasks, return_exceptions=True)


_THREAD_JOIN_S = 1.0  # bound on joining pool threads at the end of a stop


async def _wait_quietly(task: asyncio.Task[None], timeout_s: float) -> None:
    try:
        await asyncio.wait_for(task, timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
    except Exception:
        log.exception("worker helper task failed")
