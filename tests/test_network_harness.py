"""The network harness cannot rot: one namespace, the delay proxy at 2 ms, one worker
process on Redis inside the namespace drains 200 jobs through it; the round trip measured
from inside is at least the 4 ms the proxy adds, and nothing of the run is left behind."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.netns import Namespaces

import offload
from tests.procs import ROOT, child_env, ledger_lines
from tests.services import backend_url

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)
JOBS = 200
DELAY_MS = 2.0


def test_one_worker_drains_through_a_namespace_and_a_2ms_proxy(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    with backend_url("redis", tmp_path) as url:
        app = offload.App(url)

        @app.task(name="record")  # tests.apps.basic's, which the worker runs
        def record(i: int, ledger: str, sleep_s: float = 0.0) -> int:
            raise AssertionError("runs in the worker process only")

        app.enqueue_many([record.prepare(i, str(ledger)) for i in range(JOBS)])
        app.close_sync()
        with Namespaces(1, block=251) as ns:
            proxied = f"{ns.root_addr(0)}:16379"
            route = f"{proxied}=127.0.0.1:6379"
            cmd = [sys.executable, "-m", "benchmarks.netproxy", "--delay-ms", str(DELAY_MS)]
            proxy = subprocess.Popen([*cmd, route], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            try:
                assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
                inside = ns.exec_prefix(0)
                ping = [sys.executable, "-m", "benchmarks.netproxy", "ping", proxied, "50"]
                rtt_ms = float(
                    subprocess.run(
                        [*inside, *ping], cwd=ROOT, capture_output=True, text=True, check=True
                    ).stdout
                )
                # Inside the namespace 127.0.0.1 is its own loopback: the proxy is the only
                # way to Redis, so a drain proves the path.
                worker = [sys.executable, "-m", "offload", "--url"]
                worker += [url.replace("127.0.0.1:6379", proxied), "worker"]
                worker += ["tests.apps.basic:app", "--burst", "--log-level", "warning"]
                done = subprocess.run(
                    [*inside, *worker], cwd=ROOT, env=child_env(), timeout=90, check=False
                )
                assert done.returncode == 0
            finally:
                proxy.terminate()
                proxy.wait()
        assert ns.leftovers() == []
    assert rtt_ms >= 2 * DELAY_MS, f"round trip {rtt_ms:.2f} ms through a {DELAY_MS} ms proxy"
    runs = collections.Counter(line.split()[0] for line in ledger_lines(ledger))
    assert len(runs) == JOBS and set(runs.values()) == {1}
