"""The app's sync enqueue on the caller's own thread (``SyncEnqueue``), on every engine.

The backend's async ``enqueue`` is replaced by one that fails, so these tests fail if a sync
``enqueue()`` goes through the event loop instead; the hooks still run around it, a full queue
stores nothing, and the job is readable by another app (its own connections) at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import offload
from offload.job import JobState, NewJob
from tests.services import backend_url

KINDS = ["memory", "sqlite", "redis", "postgres", "rabbitmq"]


@pytest.fixture(params=KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
        return
    with backend_url(request.param, tmp_path) as u:
        yield u


class Recorder(offload.Hook):
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
        self.calls.append(("before", [j.id for j in jobs]))

    def after_enqueue(self, jobs: Sequence[offload.Job]) -> None:
        self.calls.append(("after", [j.id for j in jobs]))


def no_async_path(app: offload.App) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a sync enqueue went through the event loop")

    app.backend.enqueue = refuse  # type: ignore[method-assign]


def test_sync_enqueue_stays_on_the_callers_thread(url: str) -> None:
    app = offload.App(url, queue_limits={"small": 1})
    hooks = app.add_hook(Recorder())
    assert isinstance(hooks, Recorder)

    @app.task(name="t")
    def t(i: int) -> None: ...

    first = t.enqueue(0)  # opens the backend (on the bridge), then stores on this thread
    no_async_path(app)
    job = t.enqueue(1)
    both = app.enqueue_many([t.prepare(2), t.prepare(3)])
    ids = [first.id, job.id, *(j.id for j in both)]
    assert hooks.calls == [
        ("before", [first.id]),
        ("after", [first.id]),
        ("before", [job.id]),
        ("after", [job.id]),
        ("before", ids[2:]),
        ("after", ids[2:]),
    ]
    assert job.record.state is JobState.QUEUED
    if not url.startswith("memory"):  # another process's view: its own connections
        other = offload.App(url)
        try:
            assert [other.get_job(i).record.args for i in ids] == [
                b'{"i":%d}' % n for n in range(4)
            ]
        finally:
            other.close_sync()

    hooks.calls.clear()
    small = t.options(queue="small")
    small.enqueue(4)
    with pytest.raises(offload.QueueFull):
        small.enqueue(5)
    assert [c[0] for c in hooks.calls] == ["before", "after", "before"]  # no "after": not stored
    counts = app.run_sync(lambda b: b.counts())
    assert sum(counts.get("small", {}).values()) == 1
    app.close_sync()
