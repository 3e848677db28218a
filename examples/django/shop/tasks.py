"""Django tasks: Django's own ``@task`` decorator; offload stores and runs them."""

try:  # Django >= 6
    from django.tasks import TaskContext, task
except ImportError:  # Django 4.2-5.2 with the django-tasks backport
    from django_tasks import TaskContext, task  # type: ignore[no-redef]


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="emails", priority=50)
async def shout(text: str) -> str:
    return text.upper()


@task(takes_context=True)
def whoami(context: TaskContext, label: str) -> dict[str, object]:
    return {"label": label, "attempt": context.attempt, "id": context.task_result.id}


@task()
def fail(reason: str) -> None:
    raise KeyError(reason)


@task(takes_context=True)
def flaky(context: TaskContext, succeed_on: int) -> int:
    """Fails until its ``succeed_on``-th attempt (with ``max_attempts`` in OPTIONS)."""
    if context.attempt < succeed_on:
        raise ConnectionError(f"attempt {context.attempt} failed")
    return context.attempt
