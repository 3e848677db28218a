"""``postgresql://`` — jobs in PostgreSQL, with psycopg 3 (async) and psycopg_pool.

See ``docs/postgres.md``. The SQL lives in ``offload/backends/postgres.sql`` (named queries)
and ``offload/backends/postgres_migration_NNNN.sql`` (versioned migrations).
"""

from offload.backends.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
