"""Every ```sh block in the README and docs/ runs too, like the Python blocks (test_docs.py).

Each block runs in an empty temporary directory holding ``myapp.py``, a test app with the tasks
the docs name, on a fresh SQLite file (``OFFLOAD_APP`` and ``OFFLOAD_URL`` point at them), next
to a server of that app (``offload serve`` with a worker, on a free port; ``$OFFLOAD`` is its
address). Commands run one at a time with bash, on the same ``offload`` the tests import:

* a command must exit 0; ``curl`` runs with ``--fail-with-body`` (from a ``.curlrc``), so an
  HTTP error fails it too;
* ``offload worker`` (without ``--burst``) and ``offload serve`` run until stopped: each must
  still be running after ``SERVICE_S`` and then exit 0 on SIGTERM;
* placeholders become real things: ``ID`` and the docs' example job id are a job cancelled in
  a queue no worker serves (so show, retry and cancel all apply), ``db.internal`` and the like
  are the local services (:data:`SUBSTITUTIONS`), and ``offload serve`` gets a free ``--port``.

A block that cannot run here is marked in the Markdown, invisibly, with the line
``<!-- not run: <why> -->`` right above its fence; :func:`test_blocks_not_run_are_listed`
prints them. A fenced block without a language whose first line looks like a command fails the
suite: label it ``sh`` (or ``text``), so nothing escapes by being unlabelled.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import child_env
from tests.services import POSTGRES_HOST, POSTGRES_PORT, require_port, unique_name

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?:^<!-- not run: (?P<why>.+?) -->\n)?^```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^```", re.S | re.M
)
SHELL_LANGS = {"sh", "bash", "shell", "console"}
LOOKS_LIKE_A_COMMAND = re.compile(r"^(offload|curl|make|pip|python|\.venv/|OFFLOAD_\w+=)")
# Commands inside a running block that are not run, and why.
NOT_RUN_COMMANDS = {
    r"pip install ": "installs from a package registry (the test environment has every extra)",
}
SERVICE = re.compile(r"\boffload\b.*\b(worker|serve)\b")
SERVICE_S = 4.0  # a service that is still up this long after its start did start
COMMAND_TIMEOUT_S = 60.0
EXAMPLE_ID = "01hw7x9k3m5q8r2t4v6y8z0abc"  # the job id in docs/http.md's examples
# Names in the docs that stand for a machine's own services, and what they are here.
SUBSTITUTIONS = {
    "postgresql://app@db.internal:5432/app": f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test",
    "<token>": "doc-token-read-enqueue-0001",  # tokens are 16 characters or more
    "<other>": "doc-token-admin-000000000002",
}
EXAMPLE_CURSOR = "WzE3MTQ..."  # docs/http.md's elided cursor: a real one of the sandbox's jobs

MYAPP = """
import offload

app = offload.App("memory://")  # the CLI's OFFLOAD_URL binds it


@app.task(expose=True, queue="emails")
def send_welcome(user_id: int) -> str:
    return f"welcome {user_id}"


@app.task(name="resize", expose=True, queue="images")
def resize(image_id: int) -> int:
    return image_id


@app.task(name="send_receipt", expose=True)
def send_receipt(order: int) -> int:
    return order
"""


@dataclass(frozen=True)
class Block:
    name: str  # file#n
    body: str
    not_run: str | None  # why, when the block is marked as not run


def shell_blocks() -> list[Block]:
    out = []
    for path in FILES:
        n = 0
        for m in FENCE.finditer(path.read_text()):
            if m.group("lang") not in SHELL_LANGS:
                continue
            n += 1
            out.append(Block(f"{path.relative_to(ROOT)}#{n}", m.group("body"), m.group("why")))
    return out


BLOCKS = shell_blocks()
RUNNABLE = [b for b in BLOCKS if b.not_run is None]


def commands(body: str) -> list[str]:
    """The block's commands: continuation lines joined, comment-only lines dropped."""
    joined = body.replace("\\\n", " ")
    return [
        ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_blocks_not_run_are_listed() -> None:
    """The blocks the test suite does not run, each with its reason (printed with -s)."""
    skipped = [b for b in BLOCKS if b.not_run is not None]
    for b in skipped:
        assert b.not_run and b.not_run.strip(), f"{b.name}: a not-run mark needs its reason"
        print(f"{b.name}: not run: {b.not_run}")
    for pattern, why in NOT_RUN_COMMANDS.items():
        print(f"commands matching {pattern!r}: not run: {why}")
    assert RUNNABLE, "no shell block runs"


def test_no_command_block_is_unlabelled() -> None:
    unlabelled = []
    for path in FILES:
        for m in FENCE.finditer(path.read_text()):
            first = m.group("body").lstrip().split("\n", 1)[0]
            if m.group("lang") == "" and LOOKS_LIKE_A_COMMAND.match(first):
                unlabelled.append(f"{path.relative_to(ROOT)}: {first[:60]}")
    assert not unlabelled, f"label these blocks ```sh (or ```text): {unlabelled}"


@dataclass
class Sandbox:
    root: Path
    env: dict[str, str]
    job_id: str
    schema: str
    cursor: str


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    (tmp_path / "myapp.py").write_text(MYAPP)
    (tmp_path / ".curlrc").write_text("fail-with-body\nsilent\nshow-error\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["HOME"] = str(tmp_path)  # curl reads its .curlrc from there
    env["OFFLOAD_APP"] = "myapp:app"
    env["OFFLOAD_URL"] = f"sqlite:///{tmp_path / 'jobs.db'}"
    port = free_port()
    env["OFFLOAD"] = f"http://127.0.0.1:{port}"
    job_id = _parked_job(tmp_path, env)
    server = subprocess.Popen(
        ["offload", "serve", "--port", str(port), "--workers", "2", "--log-level", "warning"],
        cwd=tmp_path,
        env=env,
    )
    try:
        _wait_ready(env["OFFLOAD"] + "/readyz", server)
        yield Sandbox(tmp_path, env, job_id, unique_name("offload_doc"), _cursor(env["OFFLOAD"]))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def _parked_job(root: Path, env: dict[str, str]) -> str:
    """A cancelled job in a queue no worker serves: show, retry then cancel all apply to it."""

    def offload(*args: str) -> str:
        done = subprocess.run(
            ["offload", *args], cwd=root, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"offload {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout.strip()

    for _ in range(2):  # two, so that a page of one has a next cursor
        job_id = offload("enqueue", "myapp.send_welcome", "--args", "[1]", "--queue", "parked")
        offload("jobs", "cancel", job_id)
    return job_id


def _cursor(base: str) -> str:
    with urllib.request.urlopen(base + "/v1/jobs?limit=1", timeout=10) as r:
        cursor = json.load(r)["next_cursor"]
    assert isinstance(cursor, str)
    return cursor


def _wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert server.poll() is None, "the sandbox's server exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the sandbox's server never became ready"
        time.sleep(0.1)  # the server is starting: polled, nothing to wait on instead


def localize(command: str, box: Sandbox) -> str:
    for doc, here in SUBSTITUTIONS.items():
        command = command.replace(doc, here)
    command = command.replace("schema=offload", f"schema={box.schema}")
    command = command.replace(EXAMPLE_ID, box.job_id).replace(EXAMPLE_CURSOR, box.cursor)
    command = re.sub(r"\bID\b", box.job_id, command)
    if re.search(r"\boffload\b.*\bserve\b", command):
        command = command.replace(" serve ", f" serve --port {free_port()} ", 1)
    return command


def run(command: str, box: Sandbox) -> None:
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=box.root,
        env=box.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if SERVICE.search(command) and "--burst" not in command:
        try:
            proc.wait(timeout=SERVICE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
            # uvicorn re-raises the SIGTERM once its graceful shutdown is complete.
            clean = {0, -signal.SIGTERM} if " serve " in command else {0}
            assert proc.returncode in clean, f"{command!r} exited {proc.returncode}:\n{out}"
            return
        out, _ = proc.communicate()
        raise AssertionError(f"{command!r} ended by itself ({proc.returncode}):\n{out}")
    try:
        out, _ = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(
            f"{command!r} still running after {COMMAND_TIMEOUT_S}s:\n{out}"
        ) from None
    assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{out}"


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_doc_shell_block_runs(block: Block, sandbox: Sandbox) -> None:
    if any(doc in block.body for doc in SUBSTITUTIONS) or "postgresql://" in block.body:
        require_port("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    try:
        for command in commands(block.body):
            if not any(re.match(pattern, command) for pattern in NOT_RUN_COMMANDS):
                run(localize(command, sandbox), sandbox)
    finally:
        if "postgresql://" in block.body:
            from tests.services import drop_postgres_schema

            drop_postgres_schema(sandbox.schema)
