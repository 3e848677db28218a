"""Job headers above the seam: set with ``task.options(headers=...)`` or by a hook's
``before_enqueue``, bounded, and seen by the task as ``current_job().headers``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import offload
from offload.headers import MAX_HEADERS, MAX_TOTAL_CHARS, MAX_VALUE_CHARS, check_headers
from offload.hooks import Hook
from offload.job import NewJob
from offload.worker import Worker, WorkerConfig


class Stamp(Hook):
    def __init__(self, **headers: str) -> None:
        self.headers = headers

    def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
        for job in jobs:
            job.headers.update(self.headers)


@pytest.mark.parametrize(
    "bad",
    [
        {"": "v"},
        {"has space": "v"},
        {"x" * 65: "v"},
        {"k": "v" * (MAX_VALUE_CHARS + 1)},
        {"k": 1},
        {f"k{i}": "v" for i in range(MAX_HEADERS + 1)},
        {f"k{i}": "v" * 1000 for i in range(MAX_TOTAL_CHARS // 1000 + 1)},
        [("k", "v")],
    ],
)
def test_bad_headers_are_refused(bad: Any) -> None:
    with pytest.raises(offload.ValidationError):
        check_headers(bad)
    app = offload.App("memory://")

    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(offload.ValidationError):
        t.options(headers=bad)


async def test_headers_from_options_and_hooks_reach_the_task() -> None:
    app = offload.App("memory://")
    app.add_hook(Stamp(tenant="acme"))
    seen: list[dict[str, str]] = []

    @app.task(name="sync_task")
    def sync_task() -> None:
        seen.append(offload.current_job().headers)

    @app.task(name="async_task")
    async def async_task() -> None:
        seen.append(offload.current_job().headers)

    async with app:
        one = await sync_task.options(headers={"request-id": "r1"}).aenqueue()
        two = await async_task.aenqueue()
        assert one.record.headers == {"request-id": "r1", "tenant": "acme"}
        await Worker(app, WorkerConfig(burst=True, poll_s=0.05)).run()
        assert (await one.arefresh()).state is offload.JobState.SUCCEEDED
        assert (await two.arefresh()).record.headers == {"tenant": "acme"}
    assert sorted(seen, key=len) == [{"tenant": "acme"}, {"request-id": "r1", "tenant": "acme"}]


async def test_a_hook_that_overfills_the_headers_stores_nothing() -> None:
    app = offload.App("memory://")
    app.add_hook(Stamp(big="x" * MAX_VALUE_CHARS, more="y" * MAX_VALUE_CHARS))
    app.add_hook(Stamp(again="z" * MAX_VALUE_CHARS, last="w" * MAX_VALUE_CHARS))

    @app.task(name="t")
    def t() -> None: ...

    async with app:
        with pytest.raises(offload.ValidationError, match="headers hold"):
            await t.aenqueue()
        assert await app.call(lambda b: b.counts()) == {}
