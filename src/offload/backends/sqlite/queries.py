"""The SQLite backend's SQL: the named queries of ``queries.sql`` and the schema version."""

from __future__ import annotations

from importlib import resources

# PRAGMA user_version of the file. Bump it with an ``upgrade_N`` query that brings a version
# N-1 file to N (2: dedup keys scoped by queue; 3: unique_for index, schedules table; 4: the
# finished index, incremental vacuum; 5: limits; 6: workflows; 7: job headers and progress;
# 8: a job's own retention; 9: fair claims).
SCHEMA_VERSION = 9

COLS = (
    "seq, id, task, queue, args, state, priority, attempt, max_attempts, run_at, created_at, "
    "key, started_at, finished_at, worker_id, lease_expires_at, result, error, errors, "
    "headers, progress, limits, keep_succeeded_s, keep_dead_s, keep_cancelled_s"
)
# A finished job's own retention (its task's, NULL: the backend's) for the state it is in. The
# indexes of upgrade_8 are on this very expression: queries write {own}, never a variant of it.
OWN = (
    "(CASE state WHEN 'succeeded' THEN keep_succeeded_s WHEN 'dead' THEN keep_dead_s "
    "WHEN 'cancelled' THEN keep_cancelled_s END)"
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
        queries[name.strip()] = body.strip().replace("{cols}", COLS).replace("{own}", OWN)
    return queries


Q = _load_queries()
