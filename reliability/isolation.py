"""An isolated URL per backend kind, and its removal afterwards.

A small copy of what ``tests/services.py`` does (the harness runs outside pytest and must not
import from ``tests``): a fresh SQLite file, PostgreSQL schema, Redis key prefix or RabbitMQ
prefix per run, removed when the run ends. Nothing is removed that the run did not create.
Beanstalkd runs get a beanstalkd of their own (loopback, a free port, a binlog fsynced at every
write in the run's directory), so that the backend-fault test can kill and restart it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672

REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
# The test cluster of tests/redis_cluster.sh (masters 7000-7002 when started).
REDIS_CLUSTER_PORTS = (7000, 7001, 7002, 7003, 7004, 7005)
REDIS_CLUSTER_URL = "redis+cluster://" + ",".join(
    f"{REDIS_HOST}:{p}" for p in REDIS_CLUSTER_PORTS[:3]
)
POSTGRES_URL = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"
RABBITMQ_URL = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/"

KINDS = ("sqlite", "postgres", "redis", "rabbitmq", "beanstalkd")
# Run only when named (``--backend redis_cluster``): it needs tests/redis_cluster.sh's cluster.
EXTRA_KINDS = ("redis_cluster",)
_MODULE = {
    "sqlite": "sqlite",
    "postgres": "postgres",
    "redis": "redis",
    "rabbitmq": "rabbitmq",
    "redis_cluster": "redis",
    "beanstalkd": "beanstalkd",
}
_PORT = {
    "postgres": (POSTGRES_HOST, POSTGRES_PORT),
    "redis": (REDIS_HOST, REDIS_PORT),
    "redis_cluster": (REDIS_HOST, REDIS_CLUSTER_PORTS[0]),
    "rabbitmq": (RABBITMQ_HOST, RABBITMQ_PORT),
}


class Unavailable(Exception):
    """The backend kind cannot be used here (not built yet, or its service is not running)."""


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def check(kind: str) -> None:
    """Raise :class:`Unavailable` with the reason when ``kind`` cannot run here."""
    if kind not in _MODULE:
        known = ", ".join(KINDS + EXTRA_KINDS)
        raise Unavailable(f"unknown backend kind {kind!r} (known: {known})")
    if importlib.util.find_spec(f"offload.backends.{_MODULE[kind]}") is None:
        raise Unavailable(f"the {kind} backend is not part of this build")
    if kind == "beanstalkd" and shutil.which("beanstalkd") is None:
        raise Unavailable("beanstalkd is not installed (apt-get install beanstalkd)")
    if kind in _PORT:
        host, port = _PORT[kind]
        try:
            socket.create_connection((host, port), timeout=1.0).close()
        except OSError:
            raise Unavailable(f"{kind} is not listening on {host}:{port}") from None


@contextlib.contextmanager
def isolated_url(kind: str, workdir: Path) -> Iterator[str]:
    """Yield a URL of ``kind`` whose data nothing else uses; remove that data afterwards."""
    check(kind)
    name = unique_name("offload_rel")
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'jobs.db'}"
    elif kind == "postgres":
        try:
            yield f"{POSTGRES_URL}?schema={name}&auto_migrate=1"
        finally:
            _drop_schema(name)
    elif kind == "redis":
        try:
            yield f"{REDIS_URL}?prefix={name}"
        finally:
            _delete_redis_prefix(name)
    elif kind == "redis_cluster":
        try:
            yield f"{REDIS_CLUSTER_URL}/?prefix={name}"
        finally:
            for host, port in redis_cluster_masters():
                _delete_redis_prefix(name, f"redis://{host}:{port}/0")
    elif kind == "beanstalkd":
        port = start_beanstalkd(workdir)
        try:
            store = f"sqlite:///{workdir / 'state.db'}"
            yield f"beanstalk://127.0.0.1:{port}/?prefix={name}&store={store}"
        finally:
            stop_beanstalkd(workdir)
    else:
        try:
            yield f"{RABBITMQ_URL}?prefix={name}&store=sqlite:///{workdir / 'state.db'}"
        finally:
            _delete_rabbitmq_prefix(name)


def start_beanstalkd(workdir: Path, port: int = 0) -> int:
    """Start this run's beanstalkd (on ``port``, or a free one) with its binlog in ``workdir``;
    its pid goes to ``workdir/beanstalkd.pid``. Returns the port."""
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    binlog = workdir / "beanstalkd-binlog"
    binlog.mkdir(exist_ok=True)
    exe = shutil.which("beanstalkd") or "beanstalkd"
    cmd = [exe, "-l", "127.0.0.1", "-p", str(port), "-b", str(binlog), "-f", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (workdir / "beanstalkd.pid").write_text(f"{proc.pid} {port}")
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise Unavailable(f"beanstalkd did not start on port {port}") from None
            time.sleep(0.05)


def stop_beanstalkd(workdir: Path, sig: int = signal.SIGTERM) -> int:
    """Stop this run's beanstalkd (SIGKILL: as a crash); the port it listened on."""
    pid, port = (int(x) for x in (workdir / "beanstalkd.pid").read_text().split())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return port


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def redis_cluster_masters() -> list[tuple[str, int]]:
    """(host, port) of each master of the test cluster now."""
    from redis.cluster import RedisCluster

    client = RedisCluster(host=REDIS_HOST, port=REDIS_CLUSTER_PORTS[0])
    try:
        return [(n.host, n.port) for n in client.get_primaries()]  # type: ignore[no-untyped-call]
    finally:
        client.close()


def _delete_redis_prefix(prefix: str, url: str = REDIS_URL) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        for pattern in ("{" + prefix + ":*", "{" + prefix + "}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(keys), 1000):
                client.unlink(*keys[i : i + 1000])
    finally:
        client.close()


def rabbitmqctl(*args: str, timeout_s: float = 60) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout_s, check=True
    )
    return done.stdout


def _delete_rabbitmq_prefix(prefix: str) -> None:
    import asyncio

    def names(what: str) -> list[str]:
        return [n for n in rabbitmqctl(what, "name").split() if n.startswith(prefix + ".")]

    async def delete(queues: list[str], exchanges: list[str]) -> None:
        import aio_pika

        conn = await aio_pika.connect(RABBITMQ_URL)
        async with conn:
            channel = await conn.channel()
            for q in queues:
                await channel.queue_delete(q)
            for x in exchanges:
                await channel.exchange_delete(x)

    asyncio.run(delete(names("list_queues"), names("list_exchanges")))
