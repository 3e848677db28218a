"""``SentryHook``: failed attempts (retry and dead) reported with the job's context, captured
locally by ``before_send`` (events are dropped there: nothing leaves the process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk

import offload
from offload.contrib.sentry import SentryHook
from offload.job import NewJob, new_job_id
from offload.worker import Worker, WorkerConfig

Event = dict[str, Any]


@pytest.fixture
def events() -> Iterator[list[Event]]:
    captured: list[Event] = []

    def keep(event: Any, hint: dict[str, Any]) -> None:
        captured.append(dict(event))
        return None  # dropped: never sent

    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        before_send=keep,
        default_integrations=False,  # only what the hook reports, not log records
        auto_enabling_integrations=False,
    )
    yield captured
    sentry_sdk.init()  # no DSN: a disabled client, for the tests that follow


async def test_failed_attempts_are_reported_with_the_job_context(events: list[Event]) -> None:
    app = offload.App("memory://")
    app.add_hook(SentryHook())

    @app.task(name="flaky", max_attempts=2, retry=offload.FixedBackoff(0))
    def flaky(n: int) -> None:
        raise ValueError(f"bad input {n}")

    @app.task(name="fine")
    def fine() -> None: ...

    async with app:
        job = await flaky.options(headers={"request-id": "r-7"}).aenqueue(7)
        await fine.aenqueue()
        gone = NewJob(id=new_job_id(), task="gone", queue="default", args=b"{}", max_attempts=1)
        await app.aenqueue_many([gone])
        await Worker(app, WorkerConfig(burst=True, poll_s=0.05)).run()
    by_task: dict[str, list[Event]] = {}
    for e in events:
        by_task.setdefault(e["tags"]["offload.task"], []).append(e)
    assert set(by_task) == {"flaky", "gone"}  # the success reported nothing
    retry, dead = sorted(by_task["flaky"], key=lambda e: e["tags"]["offload.attempt"])
    assert (retry["level"], dead["level"]) == ("warning", "error")
    assert (retry["tags"]["offload.outcome"], dead["tags"]["offload.outcome"]) == ("retry", "dead")
    for attempt, event in ((1, retry), (2, dead)):
        (exc,) = event["exception"]["values"]
        assert (exc["type"], exc["value"]) == ("ValueError", "bad input 7")
        assert exc["stacktrace"]["frames"][-1]["function"] == "flaky"
        context = event["contexts"]["offload job"]
        assert context["id"] == job.id and context["attempt"] == attempt
        assert (context["task"], context["queue"], context["max_attempts"]) == (
            "flaky",
            "default",
            2,
        )
        assert context["headers"] == {"request-id": "r-7"}
        assert event["tags"]["offload.queue"] == "default"
    assert retry["contexts"]["offload job"]["retry_in_s"] == 0
    (unknown,) = by_task["gone"]
    assert "exception" not in unknown and unknown["level"] == "error"
    assert "UnknownTask" in unknown["message"]


async def test_retries_can_be_left_out(events: list[Event]) -> None:
    app = offload.App("memory://")
    app.add_hook(SentryHook(retries=False))

    @app.task(name="flaky", max_attempts=2, retry=offload.FixedBackoff(0))
    def flaky() -> None:
        raise ValueError("no")

    async with app:
        await flaky.aenqueue()
        await Worker(app, WorkerConfig(burst=True, poll_s=0.05)).run()
    assert [e["tags"]["offload.outcome"] for e in events] == ["dead"]
