"""What an ``offload worker`` process on Redis loads: what running jobs needs, nothing more
(issue 15, worker memory; every module a worker imports stays resident in it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, child_env, run_cli
from tests.services import backend_url

NOT_IN_A_WORKER = (
    # every worker imported these until the CLI imported each command where it runs
    "offload.cli.jobs",
    "offload.cli.schedules",
    "offload.cli.workflows",
    "offload.server",
    # ... and this until offload.schedules imported it where a Cron reads its time zone
    "zoneinfo",
    # never imported by a worker on Redis: the server's stack, the terminal tables, the other
    # engines' drivers and backends, the optional integrations
    "starlette",
    "uvicorn",
    "jinja2",
    "prometheus_client",
    "rich",
    "cronsim",
    "sqlite3",
    "psycopg",
    "aio_pika",
    "offload.backends.sqlite",
    "offload.backends.postgres",
    "offload.backends.rabbitmq",
    "offload.contrib",
)


def unwanted(modules: list[str]) -> list[str]:
    return sorted(
        m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_IN_A_WORKER)
    )


def test_the_worker_command_imports_only_what_a_worker_needs() -> None:
    pytest.importorskip("redis")
    code = (
        "import json, sys, click\n"
        "from offload.cli.main import main\n"
        "with click.Context(main) as ctx:\n"
        "    main.get_command(ctx, 'worker')\n"  # what `offload worker` resolves
        "import offload.backends.redis, tests.apps.basic\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "offload.worker" in json.loads(out.stdout)
    assert unwanted(json.loads(out.stdout)) == []


def test_a_worker_that_ran_a_job_on_redis_imported_only_what_it_needed(tmp_path: Path) -> None:
    dump = tmp_path / "modules.json"
    code = (  # `offload worker`, writing the modules it holds as it exits
        "import atexit, json, sys\n"
        f"DUMP = {str(dump)!r}\n"
        "atexit.register(lambda: open(DUMP, 'w').write(json.dumps(sorted(sys.modules))))\n"
        "from offload.cli import run\n"
        "run()\n"
    )
    with backend_url("redis", tmp_path) as url:
        enqueued = run_cli(url, "enqueue", "add", "--args", "[40, 2]")
        assert enqueued.returncode == 0, enqueued.stderr
        worker = subprocess.run(
            [sys.executable, "-c", code, "--url", url, "worker", "tests.apps.basic:app", "--burst"],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert worker.returncode == 0, worker.stderr
        shown = run_cli(url, "jobs", "show", enqueued.stdout.strip(), "--json")
        assert json.loads(shown.stdout)["result"] == 42
    assert unwanted(json.loads(dump.read_text())) == []
