from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("offload.testing")
# Skips that are not on the not-applicable list fail under OFFLOAD_REQUIRE_SERVICES=1.
pytest_plugins = ["tests.skip_policy"]

import offload  # noqa: E402
from offload.backends.memory import MemoryBackend  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
async def mem_app() -> AsyncIterator[offload.App]:
    app = offload.App("memory://")
    await app.open()
    yield app
    await app.close()


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryBackend]:
    """An opened memory backend: a state store for what is tested through the protocol."""
    backend = MemoryBackend()
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def subprocess_env() -> Iterator[dict[str, str]]:
    """Environment for ``python -m offload`` children: the repo on the path, no inherited app."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    yield env
