"""App: the registry of tasks, bound to one backend.

The backend is opened on the first event loop that uses the app (a worker's or a web server's
loop), or on the app's own bridge thread when the first caller is sync code. Calls from any
other thread or loop are forwarded to that loop, so one app serves sync views, async views and
sync tasks running in worker threads alike. If that loop has ended, the next call opens a fresh
backend (built again from the URL) on the caller's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from offload.backends import Backend, from_url
from offload.backends.base import SyncEnqueue, TransactionalEnqueue
from offload.backends.limits import fair_key_of
from offload.backends.unique import outcome_of
from offload.backoff import Backoff, ExponentialBackoff
from offload.bridge import Bridge
from offload.errors import (
    CapabilityUnavailable,
    ConfigurationError,
    JobNotFound,
    UnknownTask,
    UsageError,
    WorkflowNotFound,
)
from offload.hooks import Hook, Hooks
from offload.job import Job, JobRecord, NewJob
from offload.limits import QueueLimits, RateLimit
from offload.schedules import BoundSchedule, Schedule, bind_all
from offload.task import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, Task, TaskConfig
from offload.workflow import ops as workflow_ops
from offload.workflow.handle import Workflow, WorkflowView
from offload.workflow.record import WorkflowRecord

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_URL = "sqlite:///offload.db"


class App:
    """``App(url)`` — ``sqlite:///offload.db`` by default, ``memory://`` for tests.

    ``queue_limits`` maps a queue name to its depth limit (waiting jobs); an enqueue past it
    raises :class:`offload.QueueFull` and stores nothing.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        backend: Backend | None = None,
        queue_limits: Mapping[str, int] | None = None,
        backend_options: Mapping[str, Any] | None = None,
    ) -> None:
        if url is not None and backend is not None:
            raise ConfigurationError("give App a url or a backend, not both")
        self.url = backend.url if backend is not None else (url or DEFAULT_URL)
        self._backend_options = dict(backend_options or {})
        self._given_backend = backend
        self._backend: Backend = backend if backend is not None else self._build_backend()
        for queue, limit in (queue_limits or {}).items():
            if not isinstance(limit, int) or limit < 1:
                raise ConfigurationError(f"queue limit for {queue!r} must be an integer >= 1")
        self.queue_limits: dict[str, int] = dict(queue_limits or {})
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, BoundSchedule] = {}  # by schedule name (see @app.task)
        self.queue_rules: dict[str, QueueLimits] = {}
        self.hooks = Hooks()
        self._bridge = Bridge(at_exit=self._close_at_exit)
        self._home: asyncio.AbstractEventLoop | None = None
        self._home_thread: int | None = None
        self._lock = threading.Lock()
        self._sync_cached: tuple[Backend, SyncEnqueue | None] | None = None  # see _sync_path

    def _build_backend(self) -> Backend:
        return from_url(self.url, **self._backend_options)

    def use_url(self, url: str) -> None:
        """Point the app at another backend URL (e.g. ``OFFLOAD_URL``). Only before first use."""
        if self._home is not None:
            raise UsageError("the backend URL cannot change once the app is in use")
        self.url = url
        self._given_backend = None
        self._backend = self._build_backend()

    def use_backend(self, backend: Backend) -> None:
        """Point the app at a backend instance, shared as given (tests: ``offload.testing``'s
        in-memory and eager backends). Only before first use, as ``use_url``."""
        if self._home is not None:
            raise UsageError("the backend cannot change once the app is in use; close it first")
        self.url = backend.url
        self._given_backend = backend
        self._backend = backend

    @property
    def backend(self) -> Backend:
        return self._backend

    def __repr__(self) -> str:
        return f"<offload.App {self.url} tasks={len(self.tasks)}>"

    # -- tasks -----------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry: Backoff | None = None,
        timeout: float | None = None,
        expose: bool = False,
        retry_on: type[Exception] | tuple[type[Exception], ...] | None = None,
        give_up_on: type[Exception] | tuple[type[Exception], ...] = (),
        backoff: Mapping[type[Exception], Backoff] | None = None,
        schedule: Schedule | Sequence[Schedule] | None = None,
        rate_limit: str | RateLimit | None = None,
        concurrency_key: str | None = None,
        max_per_key: int | None = None,
        retention: Any = None,
        fair_key: str | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry: Backoff | None = None,
        timeout: float | None = None,
        expose: bool = False,
        retry_on: type[Exception] | tuple[type[Exception], ...] | None = None,
        give_up_on: type[Exception] | tuple[type[Exception], ...] = (),
        backoff: Mapping[type[Exception], Backoff] | None = None,
        schedule: Schedule | Sequence[Schedule] | None = None,
        rate_limit: str | RateLimit | None = None,
        concurrency_key: str | None = None,
        max_per_key: int | None = None,
        retention: Any = None,
        fair_key: str | None = None,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a sync or async function as a task.

        ``name`` defaults to ``module.qualname``; ``timeout`` is in seconds; ``expose=True``
        lets the HTTP API enqueue it (no task is reachable over HTTP otherwise);
        ``schedule`` (``offload.Cron(...)``, ``offload.Every(...)`` or a list of them) has
        every worker enqueue it at each tick, once per tick (see docs/schedules.md).
        ``retry_on`` (only these exceptions retry), ``give_up_on`` (these end the job ``dead``
        at once) and ``backoff`` (a Backoff per exception class) shape retries; see
        :class:`offload.backoff.RetryPolicy`.
        ``rate_limit`` (``"100/s"`` or :class:`offload.RateLimit`), ``concurrency_key`` and
        ``max_per_key`` limit when its jobs start; ``fair_key`` (an argument's name) makes
        claims rotate among that argument's values, so one value's burst does not delay the
        others (see docs/limits.md).
        ``retention`` keeps its finished jobs that long instead of the backend's retention:
        a duration (``"12h"``, seconds, a ``timedelta``) or ``"forever"``, or a mapping of
        ``succeeded`` / ``dead`` / ``cancelled`` to one (see docs/retention.md).
        """

        def register(f: Callable[P, R]) -> Task[P, R]:
            config = TaskConfig(
                name=name or f"{f.__module__}.{f.__qualname__}",
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                retry=retry or ExponentialBackoff(),
                timeout_s=timeout,
                expose=expose,
                retry_on=retry_on,
                give_up_on=give_up_on,
                backoff=backoff,
                rate_limit=rate_limit,
                concurrency_key=concurrency_key,
                max_per_key=max_per_key,
                retention=retention,
                fair_key=fair_key,
            )
            if config.name in self.tasks:
                raise ConfigurationError(f"a task named {config.name!r} is already registered")
            t: Task[P, R] = Task(self, f, config)
            bound = bind_all(schedule, t, taken=self.schedules)
            self.tasks[config.name] = t
            self.schedules.update((b.name, b) for b in bound)
            return t

        return register(fn) if fn is not None else register

    def limit_queue(
        self,
        queue: str,
        *,
        max_running: int | None = None,
        rate_limit: str | RateLimit | None = None,
    ) -> None:
        """Limit a queue across every worker: at most ``max_running`` of its jobs at once, at
        most ``rate_limit`` (``"20/s"``) starts. Jobs enqueued from now on carry the limits."""
        self.queue_rules[queue] = QueueLimits.declare(queue, max_running, rate_limit)

    def check_limits_supported(self, task: str, *, fair: bool = False) -> None:
        """Refuse a limited job on a backend that cannot enforce limits at claim, and a job
        with a fair key on one that cannot rotate claims among keys."""
        if fair and not self._backend.capabilities.fairness:
            raise CapabilityUnavailable(
                f"{type(self._backend).__name__} cannot rotate claims among fair keys "
                f"(task {task}); use sqlite://, postgresql://, redis:// or memory:// "
                "(see docs/limits.md)"
            )
        if not self._backend.capabilities.limits:
            raise CapabilityUnavailable(
                f"{type(self._backend).__name__} cannot enforce rate or concurrency limits "
                f"(task {task}): they need a job store. Use sqlite://, postgresql://, redis:// "
                "or memory://, or give an amqp:// or beanstalk:// URL one with "
                "?store=<url> (see docs/limits.md)"
            )

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(name) from None

    # -- hooks -----------------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> Hook:
        """Register a hook (see :mod:`offload.hooks`): ``before_*`` hooks run in the order
        they were added, ``after_*`` ones in reverse. A worker takes the hooks registered
        when it starts."""
        self.hooks.add(hook)
        return hook

    # -- the backend's loop ----------------------------------------------------------------

    async def open(self) -> None:
        """Open the backend on the running loop (done on first use anyway)."""
        await self._ensure_home(asyncio.get_running_loop())

    async def backend_here(self) -> tuple[Backend, bool]:
        """A backend usable on the running loop, and whether the caller owns (must close) it.

        The app's own backend when it lives on this loop (or nowhere yet, which makes this its
        home); otherwise a new one built from the URL, since engine connections belong to the
        loop that opened them. A backend given as an instance is shared as it is.
        """
        loop = asyncio.get_running_loop()
        home = await self._ensure_home(loop)
        if home is loop or self._given_backend is not None:
            return self._backend, False
        backend = self._build_backend()
        await backend.open()
        return backend, True

    async def _ensure_home(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        with self._lock:
            home = self._home
            if home is not None and not home.is_closed():
                return home
            if home is not None and self._given_backend is None:
                self._backend = self._build_backend()  # its connections died with the old loop
            self._home, self._home_thread = loop, threading.get_ident()
        try:
            await self._backend.open()
        except BaseException:
            with self._lock:
                self._home = self._home_thread = None
            raise
        return loop

    async def close(self) -> None:
        """Close the backend and stop the bridge thread. The app can be used again after."""
        with self._lock:
            home, self._home, self._home_thread = self._home, None, None
        if home is not None and not home.is_closed():
            loop = asyncio.get_running_loop()
            if home is loop:
                await self._backend.close()
            elif home.is_running():
                fut = asyncio.run_coroutine_threadsafe(self._backend.close(), home)
                await asyncio.wrap_future(fut)
        if self._bridge.running:
            await asyncio.to_thread(self._bridge.stop)

    async def _close_at_exit(self) -> None:
        """The bridge's clean-up at interpreter exit (it runs on the bridge's loop): close the
        backend if it lives there. A script that enqueues and ends never closes the app, and a
        pool torn down with the interpreter complains about its pending tasks."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._home is not loop:
                return
            self._home = self._home_thread = None
        await self._backend.close()

    async def __aenter__(self) -> App:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def close_sync(self) -> None:
        """Close from sync code (scripts, CLI)."""
        home = self._home
        if home is not None and not home.is_closed() and home.is_running():
            if self._home_thread == threading.get_ident():
                raise UsageError("close the app with 'await app.close()' on its own loop")
            asyncio.run_coroutine_threadsafe(self._backend.close(), home).result()
        with self._lock:
            self._home = self._home_thread = None
        self._bridge.stop()

    async def call(self, fn: Callable[[Backend], Awaitable[T]]) -> T:
        """Run ``fn(backend)`` on the backend's loop, from async code on any loop."""
        loop = asyncio.get_running_loop()
        home = await self._ensure_home(loop)
        if home is loop:
            return await fn(self._backend)
        fut = asyncio.run_coroutine_threadsafe(_apply(fn, self._backend), home)
        return await asyncio.wrap_future(fut)

    def run_sync(self, fn: Callable[[Backend], Awaitable[T]]) -> T:
        """Run ``fn(backend)`` on the backend's loop, from sync code, and wait for it."""
        home = self._home
        if home is not None and not home.is_closed():
            if self._home_thread == threading.get_ident():
                raise UsageError(
                    "sync offload call on the app's own event loop would deadlock; "
                    "use the async form (await task.aenqueue(...), await job.aresult(...))"
                )
            return self._bridge.run(_apply(fn, self._backend), loop=home)
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        if in_loop:
            raise UsageError("use the async API (await ...) inside a running event loop")
        bridge_loop = self._bridge.loop()
        return self._bridge.run(self._open_then(fn, bridge_loop), loop=bridge_loop)

    async def _open_then(
        self, fn: Callable[[Backend], Awaitable[T]], loop: asyncio.AbstractEventLoop
    ) -> T:
        home = await self._ensure_home(loop)
        if home is loop:
            return await fn(self._backend)
        fut = asyncio.run_coroutine_threadsafe(_apply(fn, self._backend), home)
        return await asyncio.wrap_future(fut)

    # -- enqueue and look up ---------------------------------------------------------------

    async def aenqueue_many(self, jobs: Iterable[NewJob], *, connection: Any = None) -> list[Job]:
        """Store many prepared jobs (``task.prepare(...)``) in one backend round trip.

        All or nothing: a full queue raises QueueFull and none is stored.
        """
        batch = self._checked(jobs)
        self.hooks.enqueueing(batch)
        if connection is not None:
            # The caller's connection carries the jobs, but the backend must be open (and, with
            # auto_migrate, its schema up to date) just as the sync form makes sure it is.
            await self._ensure_home(asyncio.get_running_loop())
            records = await self._enqueue_in(connection, batch)
        else:
            records = await self.call(lambda b: b.enqueue(batch, limits=self.queue_limits))
        stored = [Job(self, r, outcome_of(n, r)) for n, r in zip(batch, records, strict=True)]
        self.hooks.enqueued(stored)
        return stored

    def enqueue_many(self, jobs: Iterable[NewJob], *, connection: Any = None) -> list[Job]:
        """``aenqueue_many`` for sync code."""
        batch = self._checked(jobs)
        self.hooks.enqueueing(batch)
        if connection is not None:
            records = self.run_sync(lambda b: self._enqueue_in(connection, batch))
        else:
            records = self._enqueue_here(batch)
        stored = [Job(self, r, outcome_of(n, r)) for n, r in zip(batch, records, strict=True)]
        self.hooks.enqueued(stored)
        return stored

    def _enqueue_here(self, batch: Sequence[NewJob]) -> list[JobRecord]:
        """Enqueue from sync code on the caller's own thread when the backend has a sync path
        (one round trip, no hop through an event loop); through :meth:`run_sync` otherwise."""
        if self._open_elsewhere():
            sync = self._sync_path()
            if sync is not None:
                return sync.enqueue_now(batch, limits=self.queue_limits)
        return self.run_sync(lambda b: b.enqueue(batch, limits=self.queue_limits))

    def _sync_path(self) -> SyncEnqueue | None:
        """The backend as a SyncEnqueue, or None; remembered per backend instance, because an
        isinstance check against a protocol costs more than the rest of the call's Python."""
        backend, cached = self._backend, self._sync_cached
        if cached is None or cached[0] is not backend:
            cached = (backend, backend if isinstance(backend, SyncEnqueue) else None)
            self._sync_cached = cached
        return cached[1]

    def _open_elsewhere(self) -> bool:
        """Whether the backend is open on a loop of another thread, opening it on the bridge
        first if it is open nowhere (``run_sync`` refuses a caller inside a running loop)."""
        home = self._home
        if home is None or home.is_closed():
            self.run_sync(_nothing)
            home = self._home
        return home is not None and self._home_thread != threading.get_ident()

    def _checked(self, jobs: Iterable[NewJob]) -> list[NewJob]:
        batch = list(jobs)
        for job in batch:
            if not isinstance(job, NewJob):
                raise UsageError("enqueue_many takes jobs made by task.prepare(...)")
            if job.limits:
                self.check_limits_supported(job.task, fair=fair_key_of(job.limits) is not None)
        return batch

    async def _enqueue_in(self, connection: Any, batch: Sequence[NewJob]) -> list[JobRecord]:
        """Enqueue inside the caller's transaction (backends that declare transactional)."""
        backend = self._backend
        if not backend.capabilities.transactional or not isinstance(backend, TransactionalEnqueue):
            raise CapabilityUnavailable(
                f"{type(backend).__name__} cannot enqueue inside your transaction"
            )
        return await backend.enqueue_in(connection, batch, limits=self.queue_limits)

    async def aget_job(self, job_id: str) -> Job:
        record = await self.call(lambda b: b.get(job_id))
        if record is None:
            raise JobNotFound(job_id)
        return Job(self, record)

    def get_job(self, job_id: str) -> Job:
        record = self.run_sync(lambda b: b.get(job_id))
        if record is None:
            raise JobNotFound(job_id)
        return Job(self, record)

    # -- workflows (offload.chain / offload.group build them; see docs/workflows.md) --------

    async def aenqueue_workflow(self, record: WorkflowRecord) -> Workflow:
        stored = await self.call(lambda b: workflow_ops.store(b, record))
        return Workflow(self, stored)

    def enqueue_workflow(self, record: WorkflowRecord) -> Workflow:
        """Store a workflow built by ``chain(...)`` / ``group(...)`` (they call this)."""
        return Workflow(self, self.run_sync(lambda b: workflow_ops.store(b, record)))

    async def aget_workflow(self, workflow_id: str) -> WorkflowView:
        return _known(await self.call(lambda b: workflow_ops.show(b, workflow_id)), workflow_id)

    def get_workflow(self, workflow_id: str) -> WorkflowView:
        """The workflow's steps, states and results; WorkflowNotFound if unknown."""
        return _known(self.run_sync(lambda b: workflow_ops.show(b, workflow_id)), workflow_id)

    async def acancel_workflow(self, workflow_id: str) -> WorkflowView:
        found = await self.call(lambda b: workflow_ops.cancel(b, workflow_id))
        return _known(found, workflow_id)

    def cancel_workflow(self, workflow_id: str) -> WorkflowView:
        """Cancel its pending steps and revoke its running ones; WorkflowNotFound if unknown."""
        return _known(self.run_sync(lambda b: workflow_ops.cancel(b, workflow_id)), workflow_id)


async def _apply(fn: Callable[[Backend], Awaitable[T]], backend: Backend) -> T:
    return await fn(backend)


async def _nothing(backend: Backend) -> None:
    """What ``run_sync`` runs to open the backend and nothing more."""


def _known(found: WorkflowView | None, workflow_id: str) -> WorkflowView:
    if found is None:
        raise WorkflowNotFound(workflow_id)
    return found
