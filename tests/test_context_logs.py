"""Log records carry the running job's id, task and attempt; ``--log-format json``.

The module doubles as the app of the CLI test (``tests.test_context_logs:app``).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import offload
from offload.worker import Worker, WorkerConfig
from offload.worker.logs import JobLogFilter, JsonFormatter, TextFormatter
from tests.procs import ROOT, child_env, offload_cmd

task_log = logging.getLogger("tests.task")


def make_app(url: str) -> offload.App:
    a = offload.App(url)

    @a.task(name="say")
    def say(word: str) -> None:
        task_log.warning("saying %s", word)

    @a.task(name="asay")
    async def asay(word: str) -> None:
        task_log.warning("async saying %s", word)

    return a


app = make_app("memory://")


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(JobLogFilter())
    task_log.addHandler(handler)
    try:
        yield out, handler
    finally:
        task_log.removeHandler(handler)


async def test_records_in_a_job_carry_its_fields_as_json(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    out, handler = captured
    handler.setFormatter(JsonFormatter())
    async with make_app("memory://") as a:
        sync_job = await a.get_task("say").aenqueue("hi")
        async_job = await a.get_task("asay").aenqueue("ho")
        task_log.warning("outside")
        await asyncio.wait_for(Worker(a, WorkerConfig(poll_s=0.05, burst=True)).run(), 10)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    by_message = {line["message"]: line for line in lines}
    assert set(by_message) == {"outside", "saying hi", "async saying ho"}
    assert "job_id" not in by_message["outside"]
    for message, job, task in [
        ("saying hi", sync_job, "say"),
        ("async saying ho", async_job, "asay"),
    ]:
        line = by_message[message]
        assert (line["job_id"], line["job_task"], line["job_attempt"]) == (job.id, task, 1)
        assert line["level"] == "warning" and line["logger"] == "tests.task"


def test_text_format_appends_the_job_after_the_message() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    record.job_id, record.job_task, record.job_attempt = "j1", "say", 2
    assert TextFormatter().format(record).endswith("x hello [job=j1 task=say attempt=2]")
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    JobLogFilter().filter(plain)
    assert getattr(plain, "job_id", "unset") is None
    assert TextFormatter().format(plain).endswith("x hello")


def test_worker_log_format_json_prints_one_object_per_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    producer = make_app(url)
    try:
        job = producer.get_task("say").enqueue("json")
    finally:
        producer.close_sync()
    cmd = offload_cmd(url, "worker", "tests.test_context_logs:app", "--burst")
    cmd += ["--log-format", "json", "--log-level", "info"]
    done = subprocess.run(
        cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # each line is an object
    said = [line for line in lines if line["message"] == "saying json"]
    assert len(said) == 1 and said[0]["job_id"] == job.id and said[0]["job_task"] == "say"
    assert any(line["logger"] == "offload.worker" for line in lines)
