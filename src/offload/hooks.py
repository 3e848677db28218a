"""Hooks: ordered middleware around enqueue and execution (dramatiq's model).

A hook is an object of a :class:`Hook` subclass that overrides the methods it needs; every
method of the base does nothing. Hooks are registered on the App (``app.add_hook(hook)``) and
run in the order they were added for the ``before_*`` events and ``worker_started``, and in
reverse order for the ``after_*``/``on_*`` events and ``worker_stopped``, so a hook added first
wraps all the others, as nested middleware does (a span opened first is closed last).

They sit above the Backend seam, so they behave the same on every backend. They are plain
(sync) methods called inline: keep them fast and never block in them (hand slow work to a
thread or a queue of your own).

A hook that raises is logged (logger ``offload.hooks``; the first failure of each hook method
with its traceback, then at most one line every 30 seconds with a count) and skipped: the job
is still stored, the attempt still runs and its outcome is still applied. A hook cannot veto
an enqueue or a run; a task steers its own job with ``Retry``, ``Cancel`` and ``Snooze``.

Where each event runs:

- ``before_enqueue(jobs)`` / ``after_enqueue(jobs)``: in the caller of ``task.enqueue``,
  ``task.aenqueue`` or ``app.enqueue_many`` (its thread and its context variables), around one
  backend call; ``after_enqueue`` only when the jobs were stored. ``before_enqueue`` may add
  to each job's ``headers`` in place (the trace context does); the result must stay within
  :mod:`offload.headers`' bounds, or the enqueue raises ``ValidationError``.
- ``before_run(job)``: on the worker's event loop, in the job's own context, just before the
  attempt starts; :func:`offload.current_job` already answers there, and context variables it
  sets are seen by the task (a sync task's thread too).
- ``after_run(job, outcome, runtime_s)``: when the attempt has ended, with the outcome the
  worker hands to the backend: ``Snoozed(0)`` when a stop past the grace gave the job back,
  and ``None`` when the worker lost the job's lease (the job was cancelled, or its lease
  expired and another worker owns it now), so nothing is applied. Every ``before_run`` is
  followed by exactly one ``after_run``.
- ``on_success`` / ``on_retry`` / ``on_dead`` / ``on_cancelled``: after ``after_run``, by
  outcome (``Succeeded``, ``RetryAt``, ``Dead``, a ``Cancelled`` raised by the task).
- ``worker_started(worker)`` / ``worker_stopped(worker)``: once per worker run.

A worker's ``listeners`` (:class:`offload.worker.WorkerListener`, the older observer) are run
as hooks after the app's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from offload.headers import check_headers
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Succeeded

if TYPE_CHECKING:
    from offload.job import Job, JobRecord, NewJob
    from offload.worker import Worker

log = logging.getLogger("offload.hooks")


class Hook:
    """Base class of hooks: override what you need; the rest does nothing."""

    def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
        """Jobs about to be stored (one backend call)."""

    def after_enqueue(self, jobs: Sequence[Job]) -> None:
        """Jobs just stored (a same-key duplicate returns the job already there)."""

    def before_run(self, job: JobRecord) -> None:
        """An attempt of ``job`` (claimed, ``job.attempt`` counted) is about to start."""

    def after_run(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
        """The attempt ended; ``outcome`` is None when the worker lost the job's lease."""

    def on_success(self, job: JobRecord, outcome: Succeeded) -> None:
        """The attempt succeeded."""

    def on_retry(self, job: JobRecord, outcome: RetryAt) -> None:
        """The attempt failed and the job will run again after ``outcome.delay_s``."""

    def on_dead(self, job: JobRecord, outcome: Dead) -> None:
        """The attempt failed and the job will not run again (``outcome.error`` says why)."""

    def on_cancelled(self, job: JobRecord, outcome: Cancelled) -> None:
        """The task cancelled its own job (raised ``offload.Cancel``)."""

    def worker_started(self, worker: Worker) -> None:
        """A worker is about to claim its first jobs."""

    def worker_stopped(self, worker: Worker) -> None:
        """A worker has stopped: its jobs ended or were given back."""


_Caller = Callable[..., None]


def _listening(hooks: Sequence[Hook], event: _Caller) -> tuple[_Caller, ...]:
    """The bound ``event`` methods of the hooks that override it, in the given order."""
    name = event.__name__
    return tuple(getattr(h, name) for h in hooks if getattr(type(h), name) is not event)


LOG_EVERY_S = 30.0  # a hook broken for every job must not bury the log in tracebacks


class Hooks:
    """An ordered list of hooks, with each event's callers computed once.

    Only hooks that override an event are called for it, so an event nobody listens to costs
    one empty-tuple check, and an app with no hooks pays nothing measurable.
    """

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self._hooks: list[Hook] = []
        self._failed: dict[str, tuple[float, int]] = {}  # hook method: (last logged, unlogged)
        self._set(list(hooks))

    def add(self, hook: Hook) -> None:
        if not isinstance(hook, Hook):
            raise TypeError(f"a hook must be an offload.hooks.Hook, not {type(hook).__name__}")
        self._set([*self._hooks, hook])

    def __iter__(self) -> Iterator[Hook]:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def plus(self, more: Sequence[Hook]) -> Hooks:
        """These hooks followed by ``more`` (a worker's own), as a new list."""
        return Hooks([*self._hooks, *more]) if more else self

    def _set(self, hooks: list[Hook]) -> None:
        self._hooks = hooks
        fwd, rev = hooks, hooks[::-1]
        self.before_enqueue = _listening(fwd, Hook.before_enqueue)
        self.after_enqueue = _listening(rev, Hook.after_enqueue)
        self.before_run = _listening(fwd, Hook.before_run)
        self.after_run = _listening(rev, Hook.after_run)
        self.on_success = _listening(rev, Hook.on_success)
        self.on_retry = _listening(rev, Hook.on_retry)
        self.on_dead = _listening(rev, Hook.on_dead)
        self.on_cancelled = _listening(rev, Hook.on_cancelled)
        self.worker_started = _listening(fwd, Hook.worker_started)
        self.worker_stopped = _listening(rev, Hook.worker_stopped)

    # -- running the events ----------------------------------------------------------------

    def _call(self, fn: _Caller, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._log_failure(getattr(fn, "__qualname__", repr(fn)))

    def _log_failure(self, name: str) -> None:
        """Each hook method's first failure with its traceback, then one line per
        ``LOG_EVERY_S`` at most, counting the failures in between."""
        now = time.monotonic()
        logged_at, unlogged = self._failed.get(name, (float("-inf"), 0))
        if now - logged_at < LOG_EVERY_S:
            self._failed[name] = (logged_at, unlogged + 1)
            return
        self._failed[name] = (now, 0)
        more = f" ({unlogged} more failures not logged)" if unlogged else ""
        log.exception("hook %s failed; ignored%s", name, more)

    def enqueueing(self, jobs: Sequence[NewJob]) -> None:
        """Run ``before_enqueue``; then check the jobs' headers, as the hooks left them (a
        job over offload.headers' bounds raises ValidationError: nothing is stored)."""
        for fn in self.before_enqueue:
            self._call(fn, jobs)
        for job in jobs:
            if job.headers:  # most jobs have none: one truth test each
                check_headers(job.headers)

    def enqueued(self, jobs: Sequence[Job]) -> None:
        for fn in self.after_enqueue:
            self._call(fn, jobs)

    def starting(self, job: JobRecord) -> None:
        for fn in self.before_run:
            self._call(fn, job)

    def ended(self, job: JobRecord, outcome: Outcome | None, runtime_s: float) -> None:
        if not self._hooks:
            return  # the common case, kept to one check
        for fn in self.after_run:
            self._call(fn, job, outcome, runtime_s)
        callers: tuple[_Caller, ...] = ()
        if isinstance(outcome, Succeeded):
            callers = self.on_success
        elif isinstance(outcome, RetryAt):
            callers = self.on_retry
        elif isinstance(outcome, Dead):
            callers = self.on_dead
        elif isinstance(outcome, Cancelled):
            callers = self.on_cancelled
        for fn in callers:
            self._call(fn, job, outcome)

    def worker_event(self, started: bool, worker: Worker) -> None:
        for fn in self.worker_started if started else self.worker_stopped:
            self._call(fn, worker)
