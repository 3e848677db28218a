"""The two roads to the same API: ``django.tasks`` (Django >= 6, Python >= 3.12) and the
``django-tasks`` backport (module ``django_tasks``) on Django 4.2-5.2. Everything else in this
package imports Django's task types from here, so it runs unchanged on either."""

from __future__ import annotations

from typing import Any

try:  # Django >= 6
    from django.tasks import (
        DEFAULT_TASK_QUEUE_NAME,
        Task,
        TaskContext,
        TaskResult,
        TaskResultStatus,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    SOURCE = "django.tasks"
except ImportError:  # the backport
    from django_tasks.backends.base import BaseTaskBackend  # type: ignore[no-redef]
    from django_tasks.base import (  # type: ignore[no-redef]
        DEFAULT_TASK_QUEUE_NAME,
        Task,
        TaskContext,
        TaskError,  # type: ignore[no-redef]
        TaskResult,
        TaskResultStatus,
    )
    from django_tasks.exceptions import (  # type: ignore[no-redef]
        InvalidTaskError as InvalidTask,
    )
    from django_tasks.exceptions import TaskResultDoesNotExist  # type: ignore[no-redef]
    from django_tasks.signals import (  # type: ignore[no-redef]
        task_enqueued,
        task_finished,
        task_started,
    )
    from django_tasks.utils import normalize_json  # type: ignore[no-redef]

    SOURCE = "django_tasks"


def task_backends() -> Any:
    """Django's handler of the ``TASKS`` setting (``task_backends[alias]``)."""
    if SOURCE == "django.tasks":
        from django.tasks import task_backends as handler
    else:
        from django_tasks import task_backends as handler  # type: ignore[no-redef]
    return handler


__all__ = [
    "DEFAULT_TASK_QUEUE_NAME",
    "SOURCE",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "normalize_json",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
