"""Real worker processes on the test Redis Cluster (tests/redis_cluster.sh): kill -9 of a
worker loses nothing, and neither does a master killed mid-drain while its replica takes over
(on the Redis Cluster and on the Valkey Cluster, ``CLUSTER_FLAVOR=valkey``).

The failover test kills a master of the shared test cluster, so it restores the cluster
(restarts the node, which rejoins as a replica) before it returns, pass or fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

import offload
from offload.job import JobState
from tests.procs import ROOT, kill_all, ledger_lines, start_worker, stop, wait_for
from tests.services import (
    CLUSTER_PORTS,
    CLUSTER_URLS,
    REDIS_HOST,
    backend_url,
    delete_redis_cluster_prefix,
    require_redis_cluster,
    unique_name,
)
from tests.test_kill9 import test_kill9_mid_run_loses_nothing as kill9_scenario

N_JOBS = 600
CONCURRENCY = 20


def cluster_dir(flavor: str) -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"offload-{flavor}-cluster"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with backend_url("redis_cluster", tmp_path) as u:
        yield u


def test_kill9_on_the_cluster(url: str, tmp_path: Path) -> None:
    kill9_scenario(url, tmp_path)


def master_of(prefix: str, queue: str, flavor: str) -> tuple[int, int]:
    """(port, slot) of the master serving ``queue``'s keys now, as a live node sees it;
    (0, slot) while no live node answers for the slot."""
    slot = key_slot(("{" + prefix + ":" + queue + "}").encode())
    for port in CLUSTER_PORTS[flavor]:
        client = redis.Redis(host=REDIS_HOST, port=port, socket_timeout=1)
        try:
            slots = client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
            for start, end, master, *_ in slots:
                if start <= slot <= end:
                    return int(master[1]), slot
        except redis.RedisError:
            continue
        finally:
            client.close()
    return 0, slot


def restore_cluster(flavor: str) -> None:
    env = {**os.environ, "CLUSTER_FLAVOR": flavor}
    subprocess.run([str(ROOT / "tests" / "redis_cluster.sh")], check=True, timeout=120, env=env)


@pytest.fixture(params=["redis", "valkey"])
def flavor(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def flavor_url(flavor: str) -> Iterator[str]:
    require_redis_cluster(flavor)
    prefix = unique_name("offload_t")
    try:
        yield f"{CLUSTER_URLS[flavor]}/?prefix={prefix}"
    finally:
        delete_redis_cluster_prefix(prefix, flavor)


def test_master_killed_mid_drain_loses_no_acknowledged_job(
    flavor: str, flavor_url: str, tmp_path: Path
) -> None:
    url = flavor_url
    prefix = url.rsplit("prefix=", 1)[1]
    port, slot = master_of(prefix, "default", flavor)
    pidfile = cluster_dir(flavor) / str(port) / "redis.pid"
    if not pidfile.exists():
        pytest.skip(f"the master on {port} was not started by tests/redis_cluster.sh")
    ledger = tmp_path / "ledger.txt"
    app = offload.App(url)

    @app.task(name="record", max_attempts=5)
    def record(i: int, ledger: str, sleep_s: float = 0.0) -> int:
        return i

    # Every job is acknowledged (stored, and on a master with appendfsync always) before the
    # kill; what the kill can cut is claims and completions, which only make jobs run again.
    app.enqueue_many([record.prepare(i, str(ledger), 0.005) for i in range(N_JOBS)])
    flags = ["--concurrency", str(CONCURRENCY), "--lease", "2", "--heartbeat", "0.5"]
    worker = start_worker(url, *flags)
    try:
        wait_for(lambda: len(ledger_lines(ledger)) >= N_JOBS // 3, 60, "a third of the jobs")
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        t0 = time.monotonic()
        moved = lambda: master_of(prefix, "default", flavor)[0] not in (0, port)  # noqa: E731
        wait_for(moved, 30, "a promotion")
        promoted = time.monotonic() - t0

        def all_done() -> bool:
            try:
                counts = app.run_sync(lambda b: b.counts())
            except offload.BackendUnavailable:
                return False
            return sum(counts.get("default", {}).get(s, 0) for s in JobState if s.final) >= N_JOBS

        wait_for(all_done, 120, "every job to finish after the failover")
        assert stop(worker) == 0
    finally:
        kill_all([worker])
        restore_cluster(flavor)
    counts = app.run_sync(lambda b: b.counts())["default"]
    app.close_sync()
    starts = Counter(line.split()[0] for line in ledger_lines(ledger))
    lost = N_JOBS - counts.get(JobState.SUCCEEDED, 0)
    duplicates = sum(n - 1 for n in starts.values())
    print(
        f"\n{flavor} slot {slot}: master {port} killed, replica promoted in {promoted:.1f}s; "
        f"lost={lost} duplicated={duplicates}"
    )
    assert lost == 0
    assert set(starts) == {str(i) for i in range(N_JOBS)}
