"""Which skips may reach CI: the one list of tests that do not apply, each with its reason.

Locally a test may skip for any reason (a service down, not root, a browser missing). In CI
(``OFFLOAD_REQUIRE_SERVICES=1``) a skip is a test that did not run, so it passes only when its
reason is on :data:`NOT_APPLICABLE` below: the test does not apply to what was parametrized
(a backend that cannot be cut, a SQLite-only test, a contract of backends without notify). Any
other skip (root, a refused tmpfs mount, playwright missing, a slow machine, a service down, a
backend missing from the build) fails the test there, with its reason.

A pytest plugin (loaded by ``tests/conftest.py``): it rewrites the report of a skipped test, or
of a module skipped while collected (``pytest.importorskip``), into a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import pytest

# (pattern matched against the whole skip reason, why that skip is not a gap in CI)
NOT_APPLICABLE: tuple[tuple[str, str], ...] = (
    (
        r"backend declares \w+=False",
        "a conformance test of a capability the backend does not claim (the no-notify memory "
        "variant has no notify); claiming it would be faking it",
    ),
    (
        r"no wait_and_claim: \w+ waits, then claims",
        "a conformance test of an optional ability (ClaimOnWake: the claim sent with the "
        "wait) on a backend without it: its workers wait, then claim, which the waiting and "
        "claim tests cover; only Redis can queue a claim behind its blocking pop",
    ),
    (
        r"the contract asks this of backends without notify only",
        "a conformance test of the no-notify contract on a backend with notify (it runs on "
        "tests/test_memory_no_notify.py)",
    ),
    (
        r"the memory backend cannot be down",
        "an outage test on a backend that lives in the process: there is nothing to cut",
    ),
    (
        r"no backend fault for SQLite \(an embedded file has no connection to cut\)",
        "the harness's backend-fault test on SQLite: there is no connection or server to cut "
        "(its disk-full test is SQLite's fault)",
    ),
    (
        r"no server to restart for SQLite \(an embedded file\)",
        "the harness's server-restart test on SQLite: it has no server",
    ),
    (
        r"server restart: (PostgreSQL|Beanstalkd)'s is in the backend-fault test",
        "the harness's server-restart test on an engine whose restart the backend-fault test "
        "already makes (the same fault twice would only cost CI time)",
    ),
    (
        r"no network for SQLite \(an embedded file\)",
        "the harness's cut-off test on SQLite: there is no connection to partition",
    ),
    (
        r"one clock for (SQLite: the file and its workers share a machine|the SQLite store of "
        r"this run: it shares the worker's machine)",
        "the harness's clock-step test where the backend's clock is the worker machine's own "
        "(an embedded file): stepping one process's clock apart would fake two machines",
    ),
    (
        r"SQLite only \(an embedded file on a disk that the test can fill\)",
        "the harness's disk-full test on a networked backend: its disk is the server's",
    ),
    (
        r"the short form soaks [\w, ]+ only",
        "CI time: the short form soaks SQLite and Redis; `make chaos` soaks every backend",
    ),
    (
        r"the doorbell is Linux only",
        "a Linux-only mechanism (CI is Linux, so it never skips there)",
    ),
)


def services_required() -> bool:
    return os.environ.get("OFFLOAD_REQUIRE_SERVICES") == "1"


def not_applicable(reason: str) -> str | None:
    """Why a skip with ``reason`` may reach CI, or None when it must fail there."""
    for pattern, why in NOT_APPLICABLE:
        if re.fullmatch(pattern, reason.strip()):
            return why
    return None


def skip_reason(longrepr: Any) -> str:
    """The reason of a skip report (pytest keeps ``(path, line, "Skipped: reason")``)."""
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(text).removeprefix("Skipped: ")


def _fail_unlisted(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not services_required():
        return
    reason = skip_reason(report.longrepr)
    if not_applicable(reason) is None:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped with OFFLOAD_REQUIRE_SERVICES=1, and not on the not-applicable list "
            f"(tests/skip_policy.py): {reason}"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_unlisted(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_unlisted(report)
    return report
