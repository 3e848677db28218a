"""``offload.contrib.django.OffloadBackend``: a production backend for Django's tasks.

.. code-block:: python

    TASKS = {"default": {
        "BACKEND": "offload.contrib.django.OffloadBackend",
        "QUEUES": ["default", "emails"],          # optional, as for any Django backend
        "OPTIONS": {"url": "postgresql://.../app"},  # or {"app": "myproject.jobs:app"}
    }}

OPTIONS: ``url`` (an offload backend URL: one offload App per backend instance, and Django
makes one instance per thread) or ``app`` (``module:attr`` of your own ``offload.App``, shared
by the whole process: prefer it in production); ``max_attempts`` (1, as Django runs a task
once; more retries a failed task); ``retry`` (an ``offload.backoff`` policy for those retries,
exponential from 1 s by default); ``database`` (a Django database
alias: inside ``transaction.atomic()`` on it, the job is written on that very connection and
commits or rolls back with your data; PostgreSQL); ``enqueue_on_commit`` (store the job only
once the current transaction on ``database`` commits, Django's ``transaction.on_commit``).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from offload.app import App
from offload.backoff import Backoff
from offload.contrib.django._compat import (
    BaseTaskBackend,
    InvalidTask,
    TaskResult,
    TaskResultDoesNotExist,
    normalize_json,
    task_enqueued,
)
from offload.contrib.django.registry import ResolvingTasks, find_django_task, register
from offload.contrib.django.results import Payload, ready_result, to_result
from offload.errors import ValidationError
from offload.job import JobRecord, NewJob
from offload.task import check_name

_OPTIONS = frozenset({"url", "app", "max_attempts", "retry", "database", "enqueue_on_commit"})


def offload_priority(priority: int) -> int:
    """Django's -100..100 onto offload's 0..9, in ten equal bands (100 joins the top one);
    higher runs first in both, and Django's default 0 is offload's 5."""
    return min(9, (priority + 100) // 20)


class OffloadBackend(BaseTaskBackend):  # type: ignore[misc]
    supports_defer = True
    supports_async_task = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        unknown = set(self.options) - _OPTIONS
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]: unknown OPTIONS {sorted(unknown)}; known: {sorted(_OPTIONS)}"
            )
        self.max_attempts, self.retry, self.database = _checked(alias, self.options)
        self.enqueue_on_commit = bool(self.options.get("enqueue_on_commit", False))
        if self.enqueue_on_commit and self.database is None:
            self.database = DEFAULT_DB_ALIAS
        self.app = _app_from(alias, self.options)
        if not isinstance(self.app.tasks, ResolvingTasks):
            self.app.tasks = ResolvingTasks(self.app.tasks, self.app)
        # Results are read back from the job store: a store-less broker has none.
        self.supports_get_result = self.app.backend.capabilities.results

    # -- Django's contract ----------------------------------------------------------------

    def validate_task(self, task: Any) -> None:
        super().validate_task(task)
        try:
            check_name(task.module_path, "task name")
            check_name(task.queue_name, "queue")
        except ValidationError as exc:
            raise InvalidTask(str(exc)) from None
        register(self.app, task, self.alias, self.max_attempts, self.retry)

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> TaskResult:  # type: ignore[type-arg]
        self.validate_task(task)
        new, pending = self._prepare(task, args, kwargs)
        if self.enqueue_on_commit:
            store = functools.partial(self.app.enqueue_many, [new])
            transaction.on_commit(store, using=self.database)
            result = pending
        elif self.database is not None and connections[self.database].in_atomic_block:
            conn = connections[self.database]
            conn.ensure_connection()
            (job,) = self.app.enqueue_many([new], connection=conn.connection)
            result = to_result(task, job.record, self.alias)
        else:
            (job,) = self.app.enqueue_many([new])
            result = to_result(task, job.record, self.alias)
        task_enqueued.send(type(self), task_result=result)
        return result

    async def aenqueue(self, task: Any, args: Any, kwargs: Any) -> TaskResult:  # type: ignore[type-arg]
        if self.database is not None:  # Django's transactions are sync-only
            return await sync_to_async(self.enqueue, thread_sensitive=True)(task, args, kwargs)
        self.validate_task(task)
        new, _ = self._prepare(task, args, kwargs)
        (job,) = await self.app.aenqueue_many([new])
        result = to_result(task, job.record, self.alias)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:  # type: ignore[type-arg]
        self._can_read()
        return self._result(self.app.run_sync(lambda b: b.get(result_id)), result_id)

    async def aget_result(self, result_id: str) -> TaskResult:  # type: ignore[type-arg]
        self._can_read()
        return self._result(await self.app.call(lambda b: b.get(result_id)), result_id)

    # -- the parts ----------------------------------------------------------------------

    def _prepare(self, task: Any, args: Any, kwargs: Any) -> tuple[NewJob, TaskResult]:  # type: ignore[type-arg]
        """The job to store, and the result Django sees before it is stored. Django's own
        rule applies first: arguments must be JSON (a TypeError/ValueError otherwise)."""
        payload = Payload(args=normalize_json(list(args)), kwargs=normalize_json(dict(kwargs)))
        bound = self.app.get_task(task.module_path).options(
            queue=task.queue_name,
            priority=offload_priority(task.priority),
            run_at=task.run_after,
            max_attempts=self.max_attempts,
        )
        new = bound.prepare(payload.args, payload.kwargs)
        return new, ready_result(task, new.id, payload.args, payload.kwargs, self.alias)

    def _can_read(self) -> None:
        if not self.supports_get_result:
            raise NotImplementedError(
                f"{self.app.backend.url} keeps no results: name a state store in its URL"
            )

    def _result(self, rec: JobRecord | None, result_id: str) -> TaskResult:  # type: ignore[type-arg]
        task = None if rec is None else find_django_task(rec.task)
        if rec is None or task is None:
            raise TaskResultDoesNotExist(result_id)
        return to_result(task, rec, self.alias)


def _checked(alias: str, options: dict[str, Any]) -> tuple[int, Backoff | None, str | None]:
    """``max_attempts``, ``retry`` and ``database``, or ImproperlyConfigured naming the bad one."""
    attempts, retry, database = (
        options.get("max_attempts", 1),
        options.get("retry"),
        options.get("database"),
    )
    where = f"TASKS[{alias!r}]['OPTIONS']"
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise ImproperlyConfigured(f"{where}: max_attempts must be an integer >= 1")
    if retry is not None and not callable(getattr(retry, "delay_s", None)):
        raise ImproperlyConfigured(f"{where}: retry must be a policy of offload.backoff")
    if database is not None and database not in settings.DATABASES:
        raise ImproperlyConfigured(f"{where}: database {database!r} is not in DATABASES")
    return attempts, retry, database


def _app_from(alias: str, options: dict[str, Any]) -> App:
    url, spec = options.get("url"), options.get("app")
    if (url is None) == (spec is None):
        raise ImproperlyConfigured(f"TASKS[{alias!r}]: give OPTIONS 'url' or 'app' (one of them)")
    if url is not None:
        return App(url)
    module_name, _, attr = str(spec).partition(":")
    try:
        app = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ImproperlyConfigured(f"TASKS[{alias!r}]: cannot load app {spec!r}: {exc}") from exc
    if not isinstance(app, App):
        raise ImproperlyConfigured(f"TASKS[{alias!r}]: {spec!r} is not an offload.App")
    return app


__all__ = ["OffloadBackend", "offload_priority"]
