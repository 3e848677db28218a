"""FailureLog: a failing operation is logged once, then at most once per interval with a
count, and once more when it works again."""

from __future__ import annotations

import logging

import pytest

from offload.errors import StorageFull
from offload.worker.errorlog import FailureLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_logged_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    errors = FailureLog(logging.getLogger("t"), "claiming jobs", every_s=30.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(121):  # a minute of failures, two a second
            errors.failed(StorageFull("the disk is full"))
            clock.now += 0.5
        errors.succeeded()
        errors.succeeded()  # nothing more to say
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("claiming jobs failed: StorageFull: the disk is full")
    assert (
        lines[1]
        == "claiming jobs still failing after 30s (61 failures): StorageFull: the disk is full"
    )
    assert lines[2].startswith("claiming jobs still failing after 60s")
    assert lines[3] == "claiming jobs works again after 60.5s (121 failures)"


def test_a_new_run_of_failures_after_a_quiet_spell_is_logged_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    errors = FailureLog(logging.getLogger("t"), "heartbeat", clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        errors.failed(StorageFull("full"))
        assert errors.failing
        errors.succeeded()
        assert not errors.failing
        clock.now += 30.0
        errors.failed(StorageFull("full again"))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "heartbeat failed",
        "heartbeat works again after 0.0s (1 failures)",
        "heartbeat failed",
    ]


def test_a_flapping_operation_logs_at_the_same_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    errors = FailureLog(logging.getLogger("t"), "claiming jobs", every_s=30.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(60):  # 90 s: fails, works a second later, fails half a second after
            errors.failed(StorageFull("full"))
            clock.now += 1.0
            errors.succeeded()
            clock.now += 0.5
        errors.failed(StorageFull("full"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "claiming jobs failed: StorageFull: full; retrying (logged at most every 30s while it "
        "fails)",
        "claiming jobs works again after 1.0s (1 failures)",
        "claiming jobs failed: StorageFull: full; retrying (logged at most every 30s while it "
        "fails; 20 brief outages since the last report)",
        "claiming jobs works again after 1.0s (1 failures)",
        "claiming jobs failed: StorageFull: full; retrying (logged at most every 30s while it "
        "fails; 20 brief outages since the last report)",
        "claiming jobs works again after 1.0s (1 failures)",
    ]  # the 61st failure, 26 s after the last line, is not news yet
