"""unique_for and on_conflict through task.options(...), and what the Job handle reports."""

from __future__ import annotations

import pytest

import offload
from offload.errors import ValidationError


@pytest.fixture
def app() -> offload.App:
    return offload.App("memory://")


def test_outcome_created_existing_replaced(app: offload.App) -> None:
    @app.task
    def ping(n: int) -> None: ...

    first = ping.options(key="k", delay=3600).enqueue(1)
    assert first.outcome == "created" and first.created
    same = ping.options(key="k").enqueue(2)
    assert (same.id, same.outcome, same.created) == (first.id, "existing", False)
    moved = ping.options(key="k", on_conflict="replace").enqueue(3)
    assert (moved.id, moved.outcome) == (first.id, "replaced")
    assert moved.record.args == b'{"n":3}'
    assert app.get_job(first.id).outcome is None  # a look-up is not an enqueue
    app.close_sync()


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"key": "k", "unique_for": -1}, "unique_for"),
        ({"key": "k", "unique_for": "10"}, "unique_for"),
        ({"key": "k", "on_conflict": "merge"}, "on_conflict"),
        ({"unique_for": 10}, "unique_for"),
        ({"on_conflict": "replace"}, "on_conflict"),
    ],
)
def test_bad_unique_options_are_refused(
    app: offload.App, options: dict[str, object], argument: str
) -> None:
    @app.task
    def ping() -> None: ...

    with pytest.raises(ValidationError) as err:
        ping.options(**options)
    assert err.value.argument == argument
