"""OffloadBackend against what Django's ``BaseTaskBackend`` promises, with real worker
processes (``manage.py offload_worker``) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from shop import tasks

from offload.contrib.django import offload_priority
from offload.contrib.django._compat import (
    InvalidTask,
    Task,
    TaskResultDoesNotExist,
    TaskResultStatus,
)
from offload.job import JobState
from tests.django_suite.conftest import UseTasks, run_worker


def test_the_backend_says_what_it_supports(use_tasks: UseTasks, tmp_path: object) -> None:
    backend = use_tasks("memory://")
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority


def test_priority_bands() -> None:
    assert [offload_priority(p) for p in (-100, -81, -80, -1, 0, 19, 20, 99, 100)] == [
        0, 0, 1, 4, 5, 5, 6, 9, 9,
    ]  # fmt: skip


def test_results_come_from_a_real_worker(store: str, use_tasks: UseTasks) -> None:
    backend = use_tasks(store)
    added = tasks.add.enqueue(2, 3)
    shouted = asyncio.run(tasks.shout.aenqueue("hi"))  # an async task, enqueued from async code
    who = tasks.whoami.enqueue("me")
    failed = tasks.fail.enqueue("no such thing")
    assert added.status == TaskResultStatus.READY and added.enqueued_at is not None
    assert added.args == [2, 3] and shouted.kwargs == {}
    run_worker(store, postgres=store.startswith("postgres"))

    added.refresh()
    assert added.status == TaskResultStatus.SUCCESSFUL and added.return_value == 5
    assert added.attempts == 1 and added.errors == [] and added.finished_at is not None
    assert tasks.shout.get_result(shouted.id).return_value == "HI"
    ctx = backend.get_result(who.id).return_value
    assert ctx == {"label": "me", "attempt": 1, "id": who.id}  # takes_context
    bad = tasks.fail.get_result(failed.id)
    assert bad.status == TaskResultStatus.FAILED and bad.attempts == 1
    (error,) = bad.errors
    assert error.exception_class is KeyError and "no such thing" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        bad.return_value  # noqa: B018  (Django raises for a failed task's value)
    asyncio.run(failed.arefresh())
    assert failed.status == TaskResultStatus.FAILED


def test_queue_priority_and_run_after_reach_the_job(store: str, use_tasks: UseTasks) -> None:
    backend = use_tasks(store)
    later = timezone.now() + timedelta(hours=1)
    result = tasks.add.using(priority=100, queue_name="emails", run_after=later).enqueue(1, 2)
    rec = backend.app.get_job(result.id).record
    assert (rec.queue, rec.priority, rec.state) == ("emails", 9, JobState.SCHEDULED)
    assert abs(rec.run_at - later.timestamp()) < 0.01
    assert tasks.add.get_result(result.id).status == TaskResultStatus.READY


def test_validate_task_refuses_what_the_backend_cannot_run(use_tasks: UseTasks) -> None:
    use_tasks("memory://", queues=["default"])
    with pytest.raises(InvalidTask, match="not valid"):
        tasks.add.using(queue_name="emails")
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=101)
    with pytest.raises(InvalidTask, match="aware"):
        tasks.add.using(run_after=timezone.now().replace(tzinfo=None))

    def local() -> None: ...

    with pytest.raises(InvalidTask, match="module level"):
        Task(func=local)
    use_tasks("memory://", queues=[])  # no QUEUES list: any name, but offload's rules hold
    with pytest.raises(InvalidTask, match="queue"):
        tasks.add.using(queue_name="no spaces please")


def test_arguments_must_be_json_and_nothing_is_stored_otherwise(use_tasks: UseTasks) -> None:
    backend = use_tasks("memory://")
    with pytest.raises(TypeError):
        tasks.add.enqueue(object(), 1)
    assert backend.app.run_sync(lambda b: b.counts()) == {}


def test_unknown_ids_do_not_exist(use_tasks: UseTasks) -> None:
    backend = use_tasks("memory://")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("01nosuchjob00000000000000")
    native = backend.app.task(name="native")(lambda: None)
    job = native.enqueue()  # an offload task, not a Django one: no TaskResult for it
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(job.id)
    with pytest.raises(TaskResultDoesNotExist):
        asyncio.run(backend.aget_result(job.id))


def test_enqueue_commits_and_rolls_back_with_djangos_transaction(
    pg_store: str, use_tasks: UseTasks
) -> None:
    """The job is written on Django's own PostgreSQL connection, inside its transaction."""
    store = pg_store
    backend = use_tasks(store, database="pg")
    backend.app.run_sync(lambda b: b.counts())  # the schema exists before the transaction
    with transaction.atomic(using="pg"):
        kept = tasks.add.enqueue(1, 1)
        assert backend.app.run_sync(lambda b: b.get(kept.id)) is None  # not committed yet
    assert tasks.add.get_result(kept.id).status == TaskResultStatus.READY
    with pytest.raises(RuntimeError), transaction.atomic(using="pg"):
        lost = tasks.add.enqueue(2, 2)
        raise RuntimeError("rolled back")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(lost.id)
    run_worker(store, postgres=True)
    assert tasks.add.get_result(kept.id).return_value == 2


def test_enqueue_on_commit_waits_for_the_commit(tmp_path: object, use_tasks: UseTasks) -> None:
    backend = use_tasks("memory://", enqueue_on_commit=True)
    with transaction.atomic():
        pending = tasks.add.enqueue(3, 4)
        assert pending.status == TaskResultStatus.READY
        assert backend.app.run_sync(lambda b: b.get(pending.id)) is None
    assert tasks.add.get_result(pending.id).args == [3, 4]
    with pytest.raises(RuntimeError), transaction.atomic():
        dropped = tasks.add.enqueue(5, 6)
        raise RuntimeError("rolled back")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(dropped.id)


def test_the_road_matches_the_django_version() -> None:
    import django

    from offload.contrib.django._compat import SOURCE

    assert SOURCE == ("django.tasks" if django.VERSION >= (6,) else "django_tasks")


def test_a_store_less_broker_says_it_keeps_no_results(use_tasks: UseTasks) -> None:
    backend = use_tasks("beanstalk://127.0.0.1:11300/")  # built, never connected
    assert backend.supports_get_result is False
    with pytest.raises(NotImplementedError, match="state store"):
        tasks.add.get_result("01nosuchjob00000000000000")


def test_bad_options_are_named(use_tasks: UseTasks) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="unknown OPTIONS \\['urll'\\]"):
        use_tasks("memory://", urll="memory://")
    with pytest.raises(ImproperlyConfigured, match="max_attempts"):
        use_tasks("memory://", max_attempts=0)
    with pytest.raises(ImproperlyConfigured, match="retry"):
        use_tasks("memory://", retry=5)
    with pytest.raises(ImproperlyConfigured, match="'nope' is not in DATABASES"):
        use_tasks("memory://", database="nope")
    with pytest.raises(ImproperlyConfigured, match="'url' or 'app'"):
        use_tasks("memory://", app="x:y")


def test_offload_tasks_enqueue_on_djangos_connection(pg_store: str, use_tasks: UseTasks) -> None:
    """offload's own tasks in Django code: the connection is given per call."""
    from django.db import connections

    app = use_tasks(pg_store).app
    native = app.task(name="native.receipt")(lambda order: order)
    app.run_sync(lambda b: b.counts())  # the schema exists before the transaction
    with pytest.raises(RuntimeError), transaction.atomic(using="pg"):
        connections["pg"].ensure_connection()
        lost = native.options(connection=connections["pg"].connection).enqueue(1)
        raise RuntimeError("rolled back")
    with transaction.atomic(using="pg"):
        kept = native.options(connection=connections["pg"].connection).enqueue(2)
    assert app.run_sync(lambda b: b.get(lost.id)) is None
    assert app.run_sync(lambda b: b.get(kept.id)) is not None


def test_retries_count_attempts_and_errors_and_send_signals(
    sqlite_url: str, use_tasks: UseTasks
) -> None:
    """With ``max_attempts``, a failed attempt is retried (READY in between); the result
    counts every attempt and keeps each failure. A worker in this process, to hear its
    task_started/task_finished signals."""
    from offload.backoff import FixedBackoff
    from offload.contrib.django._compat import task_finished, task_started
    from offload.worker import Worker, WorkerConfig

    backend = use_tasks(sqlite_url, max_attempts=3, retry=FixedBackoff(0.0))
    heard: list[tuple[str, str]] = []

    def started(sender: object, task_result: Any, **_: object) -> None:
        heard.append(("started", str(task_result.status)))

    def finished(sender: object, task_result: Any, **_: object) -> None:
        heard.append(("finished", str(task_result.status)))

    task_started.connect(started)
    task_finished.connect(finished)
    try:
        twice = tasks.flaky.enqueue(2)
        never = tasks.flaky.enqueue(9)
        asyncio.run(Worker(backend.app, WorkerConfig(burst=True, concurrency=1)).run())
    finally:
        task_started.disconnect(started)
        task_finished.disconnect(finished)
    ok = tasks.flaky.get_result(twice.id)
    assert (ok.status, ok.return_value, ok.attempts, len(ok.errors)) == ("SUCCESSFUL", 2, 2, 1)
    assert ok.errors[0].exception_class is ConnectionError
    bad = tasks.flaky.get_result(never.id)
    assert (bad.status, bad.attempts, len(bad.errors)) == ("FAILED", 3, 3)
    assert len(bad.worker_ids) == 3 and all(bad.worker_ids)
    assert heard.count(("started", "RUNNING")) == 5  # every attempt
    assert sorted(e for e in heard if e[0] == "finished") == [
        ("finished", "FAILED"),
        ("finished", "SUCCESSFUL"),
    ]  # once per task, at its end


def test_eager_mode_runs_django_tasks_inline(use_tasks: UseTasks) -> None:
    from offload.testing import eager

    backend = use_tasks("memory://")
    with eager(backend.app):
        result = tasks.add.enqueue(1, 2)
        assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3
        with pytest.raises(KeyError, match="inline"):
            tasks.fail.enqueue("inline")


def test_error_class_paths() -> None:
    from offload.contrib.django.results import error_class_path

    tb = "KeyError: 'x'\nTraceback (most recent call last):\n  ...\nKeyError: 'x'\n"
    assert error_class_path(tb) == "builtins.KeyError"
    assert error_class_path("E: m\nTraceback\nshop.errors.Declined: no") == "shop.errors.Declined"
    cut = "ValueError: big\nTraceback (most recent call last):\n  ...\n...[truncated]"
    assert error_class_path(cut) == "builtins.ValueError"
    assert error_class_path("lease expired (worker lost)") == "builtins.Exception"
    assert error_class_path("") == "builtins.Exception"
