"""The real services tests run against, and the one rule for a missing one:
skip with a clear reason locally, fail in CI (``OFFLOAD_REQUIRE_SERVICES=1``)."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
BEANSTALKD_HOST, BEANSTALKD_PORT = "127.0.0.1", 11300

REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
# The cluster tests/redis_cluster.sh starts (and .ci/run calls): masters first, then replicas.
REDIS_CLUSTER_PORTS = (7000, 7001, 7002, 7003, 7004, 7005)
REDIS_CLUSTER_URL = "redis+cluster://" + ",".join(
    f"{REDIS_HOST}:{p}" for p in REDIS_CLUSTER_PORTS[:3]
)
# The Valkey Cluster of `CLUSTER_FLAVOR=valkey tests/redis_cluster.sh`: the same layout, 7100-7105.
VALKEY_CLUSTER_PORTS = (7100, 7101, 7102, 7103, 7104, 7105)
VALKEY_CLUSTER_URL = "redis+cluster://" + ",".join(
    f"{REDIS_HOST}:{p}" for p in VALKEY_CLUSTER_PORTS[:3]
)
CLUSTER_PORTS = {"redis": REDIS_CLUSTER_PORTS, "valkey": VALKEY_CLUSTER_PORTS}
CLUSTER_URLS = {"redis": REDIS_CLUSTER_URL, "valkey": VALKEY_CLUSTER_URL}
POSTGRES_URL = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"
RABBITMQ_URL = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/"
BEANSTALKD_URL = f"beanstalk://{BEANSTALKD_HOST}:{BEANSTALKD_PORT}/"


def services_required() -> bool:
    """CI's switch; tests/skip_policy.py also fails any other skip not on its list."""
    return os.environ.get("OFFLOAD_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail when CI requires every service."""
    if services_required():
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def require_port(name: str, host: str, port: int) -> None:
    if not port_open(host, port):
        unavailable(f"{name} is not listening on {host}:{port}")


def require_redis_cluster(flavor: str = "redis") -> None:
    """The test cluster of ``flavor`` (redis, valkey) is up and serves every slot
    (``cluster_state:ok``)."""
    import redis

    host, port = REDIS_HOST, CLUSTER_PORTS[flavor][0]
    starter = "tests/redis_cluster.sh"
    if flavor != "redis":
        starter += f" with CLUSTER_FLAVOR={flavor}"
    require_port(f"{flavor.title()} Cluster ({starter})", host, port)
    client = redis.Redis(host=host, port=port, socket_timeout=2)
    try:
        state = client.cluster("INFO").get("cluster_state")
    except redis.RedisError as exc:
        unavailable(f"{flavor} cluster on {host}:{port} does not answer CLUSTER INFO: {exc}")
    finally:
        client.close()
    if state != "ok":
        unavailable(f"{flavor} cluster on {host}:{port} is not ready (cluster_state:{state})")


def delete_redis_cluster_prefix(prefix: str, flavor: str = "redis") -> None:
    """UNLINK every key under a test's prefix on every master of the test cluster."""
    import redis
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(f"redis://{REDIS_HOST}:{CLUSTER_PORTS[flavor][0]}")
    try:
        for node in client.get_primaries():  # type: ignore[no-untyped-call]
            one = redis.Redis(host=node.host, port=node.port)
            try:
                for pattern in ("{" + prefix + ":*", "{" + prefix + "}*"):
                    for key in list(one.scan_iter(match=pattern, count=1000)):
                        one.unlink(key)
            finally:
                one.close()
    finally:
        client.close()


def require_beanstalkd() -> None:
    """Skip (or fail in CI) unless beanstalkd listens on its loopback port."""
    require_port("beanstalkd", BEANSTALKD_HOST, BEANSTALKD_PORT)


def unique_name(prefix: str = "t") -> str:
    """A name no other test (or test run) uses: for key prefixes, schemas, queue names."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def backend_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """An isolated URL of a backend kind; its data is removed afterwards.

    Kinds whose backend module has not landed yet are skipped (not failed), so a test can be
    parametrized over every kind from the start.
    """
    import importlib.util

    module = {
        "sqlite": "sqlite",
        "redis": "redis",
        "redis_cluster": "redis",
        "postgres": "postgres",
        "rabbitmq": "rabbitmq",
        "rabbitmq_redis": "rabbitmq",
    }[kind]
    if importlib.util.find_spec(f"offload.backends.{module}") is None:
        pytest.skip(f"the {kind} backend is not part of this build yet")
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    if kind == "redis":
        require_port("Redis", REDIS_HOST, REDIS_PORT)
        prefix = unique_name("offload_t")
        try:
            yield f"{REDIS_URL}?prefix={prefix}"
        finally:
            delete_redis_prefix(prefix)
        return
    if kind == "redis_cluster":
        require_redis_cluster()
        prefix = unique_name("offload_t")
        try:
            yield f"{REDIS_CLUSTER_URL}/?prefix={prefix}"
        finally:
            delete_redis_cluster_prefix(prefix)
        return
    if kind == "rabbitmq":
        require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
        prefix = unique_name("offload_t")
        try:
            yield f"{RABBITMQ_URL}?prefix={prefix}&store=sqlite:///{tmp_path / 'state.db'}"
        finally:
            delete_rabbitmq_prefix(prefix)
        return
    if kind == "rabbitmq_redis":  # RabbitMQ carrying delivery, Redis as its state store
        require_port("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
        require_port("Redis", REDIS_HOST, REDIS_PORT)
        prefix = unique_name("offload_t")
        store = quote(f"{REDIS_URL}?prefix={prefix}", safe="")
        try:
            yield f"{RABBITMQ_URL}?prefix={prefix}&store={store}"
        finally:
            delete_rabbitmq_prefix(prefix)
            delete_redis_prefix(prefix)
        return
    if kind == "postgres":
        require_port("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
        schema = unique_name("offload_t")
        try:
            yield f"{POSTGRES_URL}?schema={schema}&auto_migrate=1"
        finally:
            drop_postgres_schema(schema)
        return
    pytest.skip(f"no isolated URL for {kind} is wired into the tests yet")


def drop_postgres_schema(schema: str) -> None:
    """Drop a schema a test created (only ever one named by :func:`unique_name`)."""
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def delete_redis_prefix(prefix: str) -> None:
    """UNLINK every key under a test's prefix (queue keys "{p:q}..." and global "{p}...")."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        for pattern in ("{" + prefix + ":*", "{" + prefix + "}*"):
            batch = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(batch), 1000):
                client.unlink(*batch[i : i + 1000])
    finally:
        client.close()


def delete_rabbitmq_prefix(prefix: str) -> None:
    """Delete the queues and exchanges a test declared under its prefix."""
    import asyncio
    import subprocess

    def names(what: str) -> list[str]:
        out = subprocess.run(
            ["rabbitmqctl", "-q", what, "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout.split()
        return [n for n in out if n.startswith(prefix + ".")]

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
