"""Django tasks as offload tasks: one offload task per Django task, named by its module path.

The backend registers each Django task it validates (Django validates at decoration, so a
worker that imported a module knows its tasks). A worker also resolves a name it does not
know yet by importing it, as Django's own database backend does with the path it stores:
only a Django ``Task`` object bound to an offload backend is ever run that way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django import db
from django.utils.module_loading import import_string

from offload.context import current_job
from offload.contrib.django._compat import (
    Task,
    TaskContext,
    TaskResultStatus,
    normalize_json,
    task_backends,
    task_finished,
    task_started,
)
from offload.contrib.django.results import to_result
from offload.errors import ConfigurationError

if TYPE_CHECKING:
    from offload.app import App
    from offload.backoff import Backoff
    from offload.task import Task as OffloadTask


def find_django_task(path: str) -> Any:
    """The Django ``Task`` at ``path`` (``module.function``), or None."""
    try:
        obj = import_string(path)
    except (ImportError, ValueError):
        return None
    return obj if isinstance(obj, Task) else None


class ResolvingTasks(dict[str, "OffloadTask[Any, Any]"]):
    """An app's task registry that also finds Django tasks of modules not imported yet."""

    def __init__(self, tasks: dict[str, OffloadTask[Any, Any]], app: App) -> None:
        super().__init__(tasks)
        self._app = app

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        found = super().get(name)
        if found is None:
            found = self._resolve(name)
        return default if found is None else found

    def __missing__(self, name: str) -> OffloadTask[Any, Any]:
        found = self._resolve(name)
        if found is None:
            raise KeyError(name)
        return found

    def _resolve(self, name: str) -> OffloadTask[Any, Any] | None:
        from offload.contrib.django.backend import OffloadBackend

        task = find_django_task(name)
        try:
            backend = None if task is None else task.get_backend()
        except Exception:  # its TASKS alias is not configured in this process
            return None
        if not isinstance(backend, OffloadBackend):
            return None
        backend.validate_task(task)  # registers it on its backend's app
        return dict.get(self, name)


def register(
    app: App, task: Any, alias: str, max_attempts: int, retry: Backoff | None = None
) -> None:
    """Register the offload task that runs Django task ``task`` (once per name)."""
    name = task.module_path
    if dict.get(app.tasks, name) is not None:
        return
    runner = _async_runner(name, alias) if _is_async(task) else _sync_runner(name, alias)
    try:
        app.task(name=name, queue=task.queue_name, max_attempts=max_attempts, retry=retry)(runner)
    except ConfigurationError:
        if dict.get(app.tasks, name) is None:
            raise
        # another thread's backend (sharing this app) registered it first: the same runner


def _is_async(task: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(task.func)


def _current(path: str) -> Any:
    task = find_django_task(path)
    if task is None:
        raise LookupError(f"{path} is no longer a Django task")
    return task


def _context_args(task: Any, alias: str, args: list[Any]) -> tuple[Any, list[Any]]:
    """The task's result as it stands now, and the arguments the function is called with."""
    result = to_result(task, current_job().record, alias)
    object.__setattr__(result, "status", TaskResultStatus.RUNNING)
    return result, [TaskContext(task_result=result), *args] if task.takes_context else args


def _finished(task: Any, result: Any, ok: bool) -> None:
    ctx = current_job()
    if not ok and ctx.attempt < ctx.max_attempts:
        return  # another attempt follows: not finished yet
    status = TaskResultStatus.SUCCESSFUL if ok else TaskResultStatus.FAILED
    object.__setattr__(result, "status", status)
    task_finished.send(type(task_backends()[task.backend]), task_result=result)


def _sync_runner(path: str, alias: str) -> Callable[[list[Any], dict[str, Any]], Any]:
    def run(args: list[Any], kwargs: dict[str, Any]) -> Any:
        # Sync tasks run in a worker thread: Django's connections there are closed around each
        # job, as Django does around a request, so none outlives its database's timeout.
        db.close_old_connections()
        task = _current(path)
        result, call_args = _context_args(task, alias, args)
        task_started.send(type(task_backends()[task.backend]), task_result=result)
        try:
            value = normalize_json(task.func(*call_args, **kwargs))
        except Exception:
            _finished(task, result, ok=False)
            raise
        finally:
            db.close_old_connections()
        _finished(task, result, ok=True)
        return value

    return run


def _async_runner(path: str, alias: str) -> Callable[[list[Any], dict[str, Any]], Any]:
    async def run(args: list[Any], kwargs: dict[str, Any]) -> Any:
        task = _current(path)
        result, call_args = _context_args(task, alias, args)
        task_started.send(type(task_backends()[task.backend]), task_result=result)
        try:
            value = normalize_json(await task.func(*call_args, **kwargs))
        except Exception:
            _finished(task, result, ok=False)
            raise
        _finished(task, result, ok=True)
        return value

    return run
