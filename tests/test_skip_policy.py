"""The skip policy: in CI only a not-applicable skip passes; every other one fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, child_env
from tests.skip_policy import NOT_APPLICABLE, not_applicable

# Reasons the suite's own tests give today (one each), and environmental ones that must fail.
APPLICABLE_EXAMPLES = [
    "backend declares notify=False",
    "no wait_and_claim: SQLiteBackend waits, then claims",
    "the contract asks this of backends without notify only",
    "the memory backend cannot be down",
    "no backend fault for SQLite (an embedded file has no connection to cut)",
    "SQLite only (an embedded file on a disk that the test can fill)",
    "the short form soaks sqlite, redis only",
    "the doorbell is Linux only",
    "no server to restart for SQLite (an embedded file)",
    "server restart: PostgreSQL's is in the backend-fault test",
    "no network for SQLite (an embedded file)",
    "one clock for SQLite: the file and its workers share a machine",
    "one clock for the SQLite store of this run: it shares the worker's machine",
]
ENVIRONMENTAL = [
    "mounting a tmpfs needs root",
    "mount -t tmpfs refused: permission denied",
    "needs root and pg_ctlcluster to restart PostgreSQL",
    "could not import 'playwright.sync_api': No module named 'playwright'",
    "the machine took longer than the job's delay to get here",
    "Redis is not listening on 127.0.0.1:6379",
    "the redis backend is not part of this build yet",
    "PostgreSQL restart runs in the full form only (it disturbs the host)",
    "a private RabbitMQ node needs root (its server runs as rabbitmq)",
]


def test_every_entry_has_a_reason_and_an_example() -> None:
    assert all(why.strip() for _, why in NOT_APPLICABLE)
    for pattern, _ in NOT_APPLICABLE:
        assert any(not_applicable(e) for e in APPLICABLE_EXAMPLES if pattern[:12] in e), pattern


@pytest.mark.parametrize("reason", APPLICABLE_EXAMPLES)
def test_not_applicable_skips_may_reach_ci(reason: str) -> None:
    assert not_applicable(reason) is not None


@pytest.mark.parametrize("reason", ENVIRONMENTAL)
def test_environmental_skips_do_not(reason: str) -> None:
    assert not_applicable(reason) is None


def run_pytest(tmp_path: Path, body: str, required: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_x.py").write_text(body)
    env = child_env()
    if required:
        env["OFFLOAD_REQUIRE_SERVICES"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p"]
    cmd += ["tests.skip_policy", "--rootdir", str(tmp_path), str(tmp_path / "test_x.py")]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


SKIPS = """
import pytest

def test_environmental():
    pytest.skip("mounting a tmpfs needs root")

def test_not_applicable():
    pytest.skip("the memory backend cannot be down")

@pytest.mark.skipif(True, reason="needs root and pg_ctlcluster to restart PostgreSQL")
def test_marked():
    pass
"""


def test_ci_fails_an_unlisted_skip_and_keeps_a_listed_one(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, SKIPS, required=True)
    # A skip in the call fails the test; one at setup (a skipif mark, a fixture) errors it.
    assert "1 failed, 1 skipped, 1 error" in done.stdout, done.stdout
    assert "not on the not-applicable list" in done.stdout
    local = run_pytest(tmp_path, SKIPS, required=False)
    assert "3 skipped" in local.stdout, local.stdout


def test_ci_fails_a_module_skipped_at_import(tmp_path: Path) -> None:
    body = 'import pytest\nx = pytest.importorskip("no_such_module_here")\n\ndef test_a(): pass\n'
    done = run_pytest(tmp_path, body, required=True)
    assert done.returncode != 0 and "no_such_module_here" in done.stdout, done.stdout
    assert "1 skipped" in run_pytest(tmp_path, body, required=False).stdout
