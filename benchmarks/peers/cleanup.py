"""Run-private storage on the shared services: created for one run, removed after it, and
nothing else touched (other engineers use the same Redis, PostgreSQL and RabbitMQ)."""

from __future__ import annotations

import redis

# psycopg is imported where it is used: the peers' "redis5" environment does not install it.


def redis_keys(url: str) -> set[bytes]:
    """Every key in the run's Redis database before the run (normally none: the database
    number is one nobody else uses, but a stranger's key is never deleted)."""
    with redis.Redis.from_url(url) as r:
        return set(r.scan_iter(count=1000))


def delete_new_redis_keys(url: str, before: set[bytes]) -> None:
    with redis.Redis.from_url(url) as r:
        new = [k for k in r.scan_iter(count=1000) if k not in before]
        for start in range(0, len(new), 1000):
            r.delete(*new[start : start + 1000])


def create_database(admin_url: str, name: str) -> str:
    """Create a database for this run; return its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        conn.execute(query)


def drop_schema(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
