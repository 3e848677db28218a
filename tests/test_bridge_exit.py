"""A plain script that enqueues with the sync API and ends ends quietly: the bridge closes the
app's backend on its loop at interpreter exit (a pool torn down with the interpreter prints
"Task was destroyed but it is pending!")."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from offload.backends import from_url
from offload.job import JobState
from tests.procs import child_env
from tests.services import backend_url

SCRIPT = textwrap.dedent(
    """
    import sys

    import offload

    app = offload.App(sys.argv[1])


    @app.task
    def add(a: int, b: int) -> int:
        return a + b


    print(add.enqueue(1, 2).id)
    """
)


async def stored_state(url: str, job_id: str) -> JobState | None:
    backend = from_url(url)
    await backend.open()
    try:
        record = await backend.get(job_id)
    finally:
        await backend.close()
    return None if record is None else record.state


@pytest.mark.parametrize("kind", ["postgres", "sqlite", "redis"])
def test_a_script_that_enqueues_and_ends_exits_quietly(kind: str, tmp_path: Path) -> None:
    script = tmp_path / "enqueue_one.py"
    script.write_text(SCRIPT)
    with backend_url(kind, tmp_path) as url:
        out = subprocess.run(
            [sys.executable, str(script), url],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "Task was destroyed" not in out.stderr, out.stderr
        assert "Exception ignored" not in out.stderr, out.stderr
        assert out.stderr == "", out.stderr
        assert asyncio.run(stored_state(url, out.stdout.strip())) == JobState.QUEUED
