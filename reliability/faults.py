"""Faults the harness injects. Each touches only what this run created (its processes, its
connections by client name), except the PostgreSQL restart, which restarts the whole local
cluster: every other client of it sees the server go down (pytest runs one test at a time, so
in CI nothing else is using it; do not run the harness beside another user of that server)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from reliability.isolation import (
    POSTGRES_URL,
    REDIS_URL,
    rabbitmqctl,
    redis_cluster_masters,
    start_beanstalkd,
    stop_beanstalkd,
)


def kill9(pid: int) -> float:
    """SIGKILL a process; the time it was sent."""
    t = time.time()
    os.kill(pid, signal.SIGKILL)
    return t


def freeze(pid: int) -> float:
    t = time.time()
    os.kill(pid, signal.SIGSTOP)
    return t


def thaw(pid: int) -> float:
    t = time.time()
    os.kill(pid, signal.SIGCONT)
    return t


def url_option(url: str, name: str) -> str:
    return dict(parse_qsl(urlsplit(url).query)).get(name, "")


def kill_redis_clients(url: str, server: str = REDIS_URL) -> int:
    """``CLIENT KILL`` every normal connection the Redis backend of ``url`` opened on
    ``server`` (it names them ``offload:<prefix>``); how many were killed."""
    import redis

    name = f"offload:{url_option(url, 'prefix')}"
    client = redis.Redis.from_url(server)
    try:
        ids = [c["id"] for c in client.client_list(_type="normal") if c.get("name") == name]
        killed = 0
        for client_id in ids:
            killed += int(client.client_kill_filter(_id=client_id))
        return killed
    finally:
        client.close()


def kill_redis_cluster_clients(url: str) -> int:
    """:func:`kill_redis_clients` on every master of the test cluster."""
    return sum(
        kill_redis_clients(url, f"redis://{host}:{port}/0")
        for host, port in redis_cluster_masters()
    )


def close_rabbitmq_connections(url: str) -> int:
    """Close (from the broker's side) every AMQP connection of this run's prefix: the backend
    names them ``offload:<prefix>:<instance>``; how many were closed."""
    marker = f"offload:{url_option(url, 'prefix')}:"
    listing = rabbitmqctl("list_connections", "pid", "client_properties")
    pids = [ln.split("\t")[0] for ln in listing.splitlines() if marker in ln]
    for pid in pids:
        try:
            rabbitmqctl("close_connection", pid, "reliability harness closes it")
        except subprocess.CalledProcessError:
            pass  # it closed on its own meanwhile
    return len(pids)


def postgres_cluster() -> str:
    """The version of the one local cluster (``/etc/postgresql/<version>/main``)."""
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise RuntimeError(f"expected one PostgreSQL cluster, found {versions}")
    return versions[0]


def restart_postgres() -> tuple[float, float]:
    """Restart the local PostgreSQL cluster (every client is disconnected) with the command
    this machine's cluster is managed by, and wait until it accepts connections again;
    (start, end)."""
    t0 = time.time()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", postgres_cluster(), "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    _wait_accepting(POSTGRES_URL, timeout_s=60.0)
    return t0, time.time()


def restart_beanstalkd(workdir: Path) -> None:
    """kill -9 this run's beanstalkd and start it again on the same port and binlog."""
    port = stop_beanstalkd(workdir, signal.SIGKILL)
    start_beanstalkd(workdir, port)


def _wait_accepting(url: str, timeout_s: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the server is starting: polled, nothing to wait on instead
