"""Assertions on what your code enqueued: ``JobRecorder``, a hook that keeps every job the
app stored (any backend, sync or async enqueue), and checks them against a task's call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from offload.hooks import Hook
from offload.job import Job

if TYPE_CHECKING:
    from offload.app import App
    from offload.task import Task


class JobRecorder(Hook):
    """The jobs an app enqueued since the recorder was made (or last cleared).

    ``JobRecorder.on(app)`` returns the app's recorder, adding it on first use (hooks stay on
    an app, so one recorder per app serves every test: it starts cleared).
    """

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    @classmethod
    def on(cls, app: App) -> JobRecorder:
        for hook in app.hooks:
            if isinstance(hook, cls):
                hook.clear()
                return hook
        recorder = cls()
        app.add_hook(recorder)
        return recorder

    def after_enqueue(self, jobs: Sequence[Job]) -> None:
        self.jobs.extend(jobs)

    def clear(self) -> None:
        self.jobs.clear()

    def enqueued(self, task: Task[Any, Any] | str | None = None) -> list[Job]:
        """The jobs enqueued (for ``task``, a Task or its name), oldest first."""
        if task is None:
            return list(self.jobs)
        name = task if isinstance(task, str) else task.name
        return [j for j in self.jobs if j.task == name]

    def assert_enqueued(self, task: Task[Any, Any], *args: Any, **kwargs: Any) -> Job:
        """The job enqueued for ``task`` with exactly these arguments (as the task would store
        them: defaults filled, values converted); fails listing what was enqueued otherwise."""
        want = msgspec.json.decode(task.encode_args(*args, **kwargs))
        found = self.enqueued(task)
        for job in found:
            if msgspec.json.decode(job.record.args) == want:
                return job
        seen = [msgspec.json.decode(j.record.args) for j in found] or "nothing"
        raise AssertionError(f"no job of {task.name} with {want}; enqueued: {seen}")

    def assert_not_enqueued(self, task: Task[Any, Any]) -> None:
        found = self.enqueued(task)
        if found:
            seen = [msgspec.json.decode(j.record.args) for j in found]
            raise AssertionError(f"{len(found)} job(s) of {task.name} enqueued: {seen}")
