"""``postgresql://`` — jobs in PostgreSQL, with psycopg 3 (async) and psycopg_pool.

See ``docs/postgres.md``. The SQL lives in ``sql/queries.sql`` (named queries) and
``sql/migrations/NNNN.sql`` (versioned migrations), beside this file.
"""

from offload.backends.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
