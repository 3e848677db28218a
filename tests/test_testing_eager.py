"""offload.testing for users' unit tests: eager mode, in-memory mode, JobRecorder, and the
pytest plugin (run in a pytest of its own, on a project of its own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import offload
from offload.job import JobFilter, JobState
from offload.testing import JobRecorder, eager, in_memory
from tests.procs import child_env

app = offload.App("sqlite:///never-opened-in-these-tests.db")


@app.task
def add(a: int, b: int = 1) -> int:
    return a + b


@app.task
async def shout(text: str) -> str:
    return text.upper()


@app.task
def explode(why: str) -> None:
    raise ValueError(why)


@app.task
def fan_out(n: int) -> int:
    return sum(add.enqueue(i).result(timeout=1) for i in range(n))  # nested jobs run inline


@app.task
def give_up() -> None:
    raise offload.Cancel("not today")


def test_eager_runs_each_job_inline_and_raises_its_error() -> None:
    with eager(app):
        job = add.enqueue(2, b=3)
        assert job.state is JobState.SUCCEEDED and job.result(timeout=0) == 5
        assert add.options(delay=3600).enqueue(1).result(timeout=0) == 2  # no waiting
        assert fan_out.enqueue(3).result(timeout=0) == 1 + 2 + 3
        with pytest.raises(ValueError, match="boom"):
            explode.enqueue("boom")
        (dead,) = app.run_sync(lambda b: b.list_jobs(JobFilter(task=explode.name))).jobs
        assert dead.state is JobState.DEAD and "boom" in (dead.error or "")
        assert give_up.enqueue().state is JobState.CANCELLED
    assert app.url.startswith("sqlite:")  # the app's own backend is back


async def test_eager_in_async_code() -> None:
    async with eager(app):
        assert await (await shout.aenqueue("hi")).aresult(timeout=0) == "HI"
        with pytest.raises(ValueError, match="async boom"):
            await explode.aenqueue("async boom")


def test_eager_runs_a_workflows_steps_inline() -> None:
    with eager(app):
        shape = offload.chain(add.s(1), offload.group(add.s(b=10), add.s(b=20)), fan_out.si(2))
        wf = shape.enqueue()
        assert wf.result(timeout=0) == 1 + 2  # every step ran before enqueue returned
        assert [s.state for s in wf.view().steps] == ["succeeded"] * 4
        with pytest.raises(ValueError, match="step boom"):
            offload.chain(add.s(1), explode.si("step boom"), add.s()).enqueue()


def test_in_memory_keeps_jobs_waiting_and_the_recorder_sees_them() -> None:
    with in_memory(app):
        recorder = JobRecorder.on(app)
        job = add.enqueue(4)
        assert job.state is JobState.QUEUED
        recorder.assert_enqueued(add, 4)  # b's default filled in, as stored
        recorder.assert_enqueued(add, a=4, b=1)
        with pytest.raises(AssertionError, match="enqueued: \\[\\{'a': 4, 'b': 1\\}\\]"):
            recorder.assert_enqueued(add, 5)
        recorder.assert_not_enqueued(shout)
        with pytest.raises(AssertionError, match="1 job"):
            recorder.assert_not_enqueued(add)
        assert JobRecorder.on(app) is recorder and recorder.enqueued() == []  # one, cleared


CONFTEST = 'pytest_plugins = ["offload.testing.plugin"]\n'
INI = "[pytest]\noffload_app = myjobs:app\n"
MYJOBS = """
import offload

app = offload.App("sqlite:///not-used-by-the-tests.db")


@app.task
def welcome(user_id: int) -> str:
    return f"hello {user_id}"


def sign_up(user_id: int) -> None:
    welcome.enqueue(user_id)
"""
TESTS = """
import pytest

import myjobs


def test_sign_up_enqueues_a_welcome(offload_app, offload_jobs):
    assert offload_app is myjobs.app and offload_app.url == "memory://"
    myjobs.sign_up(7)
    offload_jobs.assert_enqueued(myjobs.welcome, 7)


@pytest.mark.offload_eager
def test_eager(offload_app):
    assert myjobs.welcome.enqueue(8).result(timeout=0) == "hello 8"


def test_planted_failure(offload_jobs):
    offload_jobs.assert_enqueued(myjobs.welcome, 9)
"""


def test_the_pytest_plugin(tmp_path: Path) -> None:
    for name, text in {
        "conftest.py": CONFTEST,
        "pytest.ini": INI,
        "myjobs.py": MYJOBS,
        "test_mine.py": TESTS,
    }.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "1 failed, 2 passed" in done.stdout, done.stdout + done.stderr
    assert "no job of myjobs.welcome with {'user_id': 9}; enqueued: nothing" in done.stdout
