"""The pytest plugin for your tests: ``pytest_plugins = ["offload.testing.plugin"]`` in your
top-level conftest.py.

Fixtures:

- ``offload_app``: your App (the ini option ``offload_app = package.module:app``; a fresh
  ``App("memory://")`` without it) on a fresh in-memory backend for the test, restored
  afterwards. Mark a test ``@pytest.mark.offload_eager`` to run its jobs inline, their
  errors raised (``offload.testing.eager``).
- ``offload_jobs``: the :class:`~offload.testing.JobRecorder` of ``offload_app``: what the
  test enqueued, and ``assert_enqueued(task, *args, **kwargs)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from offload.app import App
from offload.cli.context import load_app
from offload.testing.modes import eager, in_memory
from offload.testing.recorder import JobRecorder


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("offload_app", "your offload.App as module:attr (the offload_app fixture)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "offload_eager: offload_app runs each job inline, its errors raised"
    )


@pytest.fixture
def offload_app(request: pytest.FixtureRequest) -> Iterator[App]:
    spec = request.config.getini("offload_app")
    app = load_app(spec, None) if spec else App("memory://")
    swap = eager(app) if request.node.get_closest_marker("offload_eager") else in_memory(app)
    with swap:
        yield app


@pytest.fixture
def offload_jobs(offload_app: App) -> JobRecorder:
    return JobRecorder.on(offload_app)
