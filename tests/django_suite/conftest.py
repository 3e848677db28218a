"""Django set up once for this directory: the example project's apps (examples/django), an
in-memory SQLite ``default`` database and a PostgreSQL ``pg`` one (connected only when used).

The same tests run on both roads: here with the ``django-tasks`` backport (Python 3.11,
Django 5.2), and in the Python 3.12 venv with Django 6's ``django.tasks``
(tests/test_django6.py runs them there). Each test points ``TASKS`` at a store of its own.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.test import override_settings

from tests.procs import child_env
from tests.services import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    POSTGRES_URL,
    REDIS_HOST,
    REDIS_PORT,
    REDIS_URL,
    delete_redis_prefix,
    drop_postgres_schema,
    require_port,
    unique_name,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

if not settings.configured:
    settings.configure(
        SECRET_KEY="tests",
        USE_TZ=True,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="exampleproject.urls",
        INSTALLED_APPS=["offload.contrib.django", "shop"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
            "pg": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "test",
                "USER": "postgres",
                "HOST": POSTGRES_HOST,
                "PORT": str(POSTGRES_PORT),
            },
        },
        TASKS={
            "default": {
                "BACKEND": "offload.contrib.django.OffloadBackend",
                "QUEUES": ["default", "emails"],
                "OPTIONS": {"url": "memory://"},
            }
        },
    )
    django.setup()

UseTasks = Callable[..., Any]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An offload URL of the test's own: an SQLite file, a PostgreSQL schema, or a Redis key
    prefix (the Django 6 run, ``make test-django6``, leaves Redis to this one)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    elif request.param == "postgres":
        yield from _postgres_store()
    else:
        require_port("Redis", REDIS_HOST, REDIS_PORT)
        prefix = unique_name("dj")
        yield f"{REDIS_URL}?prefix={prefix}"
        delete_redis_prefix(prefix)


@pytest.fixture
def pg_store() -> Iterator[str]:
    """A PostgreSQL schema of the test's own, as an offload URL."""
    yield from _postgres_store()


def _postgres_store() -> Iterator[str]:
    require_port("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    schema = unique_name("dj")
    try:
        yield f"{POSTGRES_URL}?schema={schema}&auto_migrate=true"
    finally:
        drop_postgres_schema(schema)


@pytest.fixture
def use_tasks() -> Iterator[UseTasks]:
    """``use_tasks(url, **options)``: TASKS pointed at ``url`` for the rest of the test."""
    overrides: list[Any] = []
    backends: list[Any] = []

    def use(url: str, queues: list[str] | None = None, **options: Any) -> Any:
        from offload.contrib.django._compat import task_backends

        tasks = {
            "default": {
                "BACKEND": "offload.contrib.django.OffloadBackend",
                "QUEUES": queues if queues is not None else ["default", "emails"],
                "OPTIONS": {"url": url, **options},
            }
        }
        override = override_settings(TASKS=tasks)
        override.enable()
        overrides.append(override)
        backends.append(task_backends()["default"])
        return backends[-1]

    yield use
    for backend in backends:
        backend.app.close_sync()
    for override in reversed(overrides):
        override.disable()


def run_worker(url: str, *extra: str, postgres: bool = False) -> None:
    """``manage.py offload_worker --burst``: a real worker process, until no job is due."""
    env = child_env()
    env["EXAMPLE_OFFLOAD_URL"] = url
    if postgres:
        env["EXAMPLE_POSTGRES"] = POSTGRES_URL
    cmd = [sys.executable, "manage.py", "offload_worker", "--burst", "-q", "default,emails"]
    done = subprocess.run(
        [*cmd, *extra], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
