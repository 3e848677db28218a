"""A task's own retention (``@app.task(retention=...)``): what it accepts, that every way of
making a job stamps it, and that a worker's outcomes apply it. The engines' side (each finishing
path, shorter and longer than the backend's) is in the conformance suite and
``tests/test_retention.py``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import offload
from offload.backends.memory import MemoryBackend
from offload.backends.retention import DAY_S
from offload.job import KEPT_FOREVER_S, JobRetention
from offload.worker import Worker, WorkerConfig
from offload.workflow import chain
from offload.workflow.canvas import build
from offload.workflow.record import start

HOUR_S = 3600.0


@pytest.mark.parametrize(
    ("given", "stamped"),
    [
        (None, None),
        ("1h", JobRetention(HOUR_S, HOUR_S, HOUR_S)),
        (90, JobRetention(90.0, 90.0, 90.0)),
        (timedelta(days=1), JobRetention(DAY_S, DAY_S, DAY_S)),
        ("forever", JobRetention(KEPT_FOREVER_S, KEPT_FOREVER_S, KEPT_FOREVER_S)),
        ({"dead": "forever"}, JobRetention(None, KEPT_FOREVER_S, None)),
        ({"succeeded": "15m", "cancelled": 0}, JobRetention(900.0, None, 0.0)),
    ],
)
def test_the_shapes_a_task_retention_takes(given: Any, stamped: JobRetention | None) -> None:
    app = offload.App("memory://")

    @app.task(retention=given)
    def task(n: int) -> None:
        pass

    assert task.retention == stamped
    assert task.prepare(1).retention == stamped


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("soon", "not 'soon'"),
        (-1, "not -1"),
        (True, "not True"),
        ("3 days", "not '3 days'"),
        (timedelta(seconds=-5), "not -5.0"),
        ({}, "not an empty mapping"),
        ({"done": "1d"}, "not done"),
        ({"dead": "later"}, "retention of dead jobs"),
        (["1h"], "not ['1h']"),
    ],
)
def test_a_bad_task_retention_is_a_configuration_error_naming_the_task(
    bad: object, says: str
) -> None:
    app = offload.App("memory://")
    with pytest.raises(offload.ConfigurationError, match="'mytask'") as info:
        app.task(name="mytask", retention=bad)(lambda: None)
    assert says in str(info.value)
    assert "mytask" not in app.tasks


def test_every_way_of_making_a_job_stamps_the_retention() -> None:
    app = offload.App("memory://")
    own = {"succeeded": "1h"}

    @app.task(retention=own, schedule=offload.Every(minutes=5))
    def tick() -> int:
        return 1

    @app.task(retention=own)
    def step(n: int) -> None:
        pass

    stamped = JobRetention(succeeded_s=HOUR_S)
    assert tick.options(delay=5, priority=3).prepare().retention == stamped
    assert app.schedules[next(iter(app.schedules))].job(1_000_000.0).retention == stamped
    first, jobs = start(build(chain(tick.si(), step.s())))
    assert [j.retention for j in jobs] == [stamped]
    assert [s.retention for s in first.steps] == [stamped, stamped]  # the later step's too


async def test_a_workers_outcomes_take_the_tasks_retention() -> None:
    now = [1_000_000.0]
    app = offload.App(backend=MemoryBackend("memory://?retention=1d", clock=lambda: now[0]))

    @app.task(retention="1h", give_up_on=KeyError)
    def short(how: str) -> None:
        if how == "give up":
            raise KeyError(how)
        if how == "cancel":
            raise offload.Cancel("not needed")

    @app.task(max_attempts=1)
    def plain(how: str) -> None:
        if how == "fail":
            raise ValueError(how)

    shorts = [await short.aenqueue(how) for how in ("ok", "give up", "cancel")]
    plains = [await plain.aenqueue(how) for how in ("ok", "fail")]
    await Worker(app, WorkerConfig(burst=True, poll_s=0.05)).run()
    states = [(await j.arefresh()).state.value for j in (*shorts, *plains)]
    assert states == ["succeeded", "dead", "cancelled", "succeeded", "dead"]
    now[0] += 2 * HOUR_S
    assert await app.backend.run_maintenance() == len(shorts)
    assert [await app.backend.get(j.id) for j in shorts] == [None] * len(shorts)
    now[0] += DAY_S
    assert await app.backend.run_maintenance() == len(plains)
