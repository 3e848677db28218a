"""The SQLite backend's SQL: the named queries of ``queries.sql`` and the schema version."""

from __future__ import annotations

from importlib import resources

# PRAGMA user_version of the file. Bump it with an ``upgrade_N`` query that brings a version
# N-1 file to N (2: dedup keys scoped by queue; 3: unique_for index, schedules table; 4: the
# finished index, incremental vacuum; 5: limits; 6: workflows; 7: job headers and progress;
# 8: fair claims).
SCHEMA_VERSION = 8

COLS = (
    "seq, id, task, queue, args, state, priority, attempt, max_attempts, run_at, created_at, "
    "key, started_at, finished_at, worker_id, lease_expires_at, result, error, errors, "
    "headers, progress, limits"
)
FIELDS = tuple(COLS.split(", "))


def _load_queries() -> dict[str, str]:
    text = (
        resources.files("offload.backends.sqlite")
        .joinpath("queries.sql")
        .read_text(encoding="utf-8")
    )
    queries: dict[str, str] = {}
    for block in text.split("-- name: ")[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip().replace("{cols}", COLS)
    return queries


Q = _load_queries()
