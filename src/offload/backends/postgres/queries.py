"""The PostgreSQL backend's SQL (named queries loaded from ``sql/queries.sql``), its migrations,
its URL options, and the decoding of stored rows."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgspec

from offload.backends.common import check_known, flag, masked
from offload.backends.retention import OPTIONS as retention_options
from offload.backends.retention import Retention, parse_retention
from offload.errors import ConfigurationError
from offload.job import AttemptError, JobRecord, JobRetention, JobState, Lease
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Succeeded

# One value per statement (not per row, not per transaction): every row a statement touches
# gets the same time, and a long caller transaction does not freeze the clock.
_NOW = "extract(epoch from statement_timestamp())::float8"
_COLUMNS = (
    "id, task, queue, args, state, priority, attempt, max_attempts, run_at, created_at, key, "
    "started_at, finished_at, worker_id, lease_expires_at, result, error, errors, seq, "
    "headers, progress, limits, keep_succeeded_s, keep_dead_s, keep_cancelled_s"
)
N_COLUMNS = 25
# A finished job's own retention (its task's, NULL: the backend's) for the state it is in. The
# indexes of migration 0009 are on this very expression: queries write {own}, never a variant.
_OWN = (
    "(CASE state WHEN 'succeeded' THEN keep_succeeded_s WHEN 'dead' THEN keep_dead_s "
    "WHEN 'cancelled' THEN keep_cancelled_s END)"
)
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_NAME_RE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _column_list(prefix: str) -> str:
    cols = [c.strip() for c in _COLUMNS.split(",")]
    return ", ".join(
        f"{prefix}errors::text AS errors" if c == "errors" else f"{prefix}{c}" for c in cols
    )


def _render(text: str, schema: str) -> str:
    return (
        text.replace("{schema}", f'"{schema}"')
        .replace("{now}", _NOW)
        .replace("{own}", _OWN)
        .replace("{cols}", _column_list(""))
        .replace("{jcols}", _column_list("j."))
    )


_SQL = resources.files("offload.backends.postgres").joinpath("sql")


def load_queries(schema: str) -> dict[str, str]:
    """Every named query of ``sql/queries.sql``, rendered for ``schema``."""
    text = _SQL.joinpath("queries.sql").read_text("utf-8")
    parts = _NAME_RE.split(text)
    named = dict(zip(parts[1::2], parts[2::2], strict=True))
    # A fragment two queries end with (enqueue and enqueue_one), written once.
    rest = named.pop("insert_input").strip()
    return {
        name: _render(body.strip().replace("{insert_input}", f"\n{rest}"), schema)
        for name, body in named.items()
    }


def load_migrations(schema: str) -> list[tuple[int, str]]:
    """``(version, sql)`` for every ``sql/migrations/NNNN.sql``, in version order."""
    out: list[tuple[int, str]] = []
    for entry in _SQL.joinpath("migrations").iterdir():
        m = re.fullmatch(r"(\d{4})\.sql", entry.name)
        if m:
            out.append((int(m.group(1)), _render(entry.read_text("utf-8"), schema)))
    return sorted(out)


def lock_namespace(schema: str) -> int:
    """The first key of this schema's advisory locks (an int4)."""
    return zlib.crc32(f"offload:{schema}".encode()) - 2**31


@dataclass(frozen=True)
class Options:
    """What offload reads from a ``postgresql://`` URL's query (stripped before psycopg)."""

    conninfo: str
    masked_url: str
    schema: str = "offload"
    auto_migrate: bool = False
    retention: Retention = field(default_factory=Retention)
    pool_size: int = 10
    timeout_s: float = 5.0
    # "own": LISTEN on a connection of its own; "shared": on the pool's only connection.
    listen: str = "own"
    # Dead row versions this process makes between two VACUUMs of the jobs table (vacuum.py);
    # 0: never, autovacuum alone.
    vacuum_every: int = 50_000
    # An index above this size and far above what the table's rows need is rebuilt after a
    # VACUUM (vacuum.py); 0: never.
    reindex_mb: int = 8


_OURS = {
    "schema",
    "auto_migrate",
    "pool_size",
    "timeout",
    "listen",
    "vacuum_every",
    "reindex_mb",
    *retention_options,
}


def parse_url(url: str, overrides: dict[str, Any]) -> Options:
    """Split ``url`` into psycopg's conninfo and offload's options; ``overrides`` (constructor
    keywords) win over the URL."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in pairs if k in _OURS}
    theirs = [(k, v) for k, v in pairs if k not in _OURS]
    check_known("PostgreSQL", overrides, sorted(_OURS))
    values: dict[str, Any] = {**ours, **overrides}
    if not any(k == "application_name" for k, _ in theirs):
        # Named, so that pg_stat_activity counts a schema's connections (docs/scaling.md).
        theirs.append(("application_name", f"offload:{values.get('schema', 'offload')}"))
    # A space as %20, not "+": libpq decodes only %-escapes (options=-c%20statement_timeout%3D5).
    query = urlencode(theirs, quote_via=quote)
    conninfo = urlunsplit(parts._replace(scheme="postgresql", query=query))
    masked_url = masked(url)
    auto_migrate = flag("auto_migrate", values.get("auto_migrate", False))
    try:
        schema = str(values.get("schema", "offload"))
        opts = Options(
            conninfo=conninfo,
            masked_url=masked_url,
            schema=schema,
            auto_migrate=auto_migrate,
            retention=parse_retention(values),
            # listen=shared alone means the one connection it needs.
            pool_size=int(values.get("pool_size", 1 if values.get("listen") == "shared" else 10)),
            timeout_s=float(values.get("timeout", 5.0)),
            listen=str(values.get("listen", "own")),
            vacuum_every=int(values.get("vacuum_every", 50_000)),
            reindex_mb=int(values.get("reindex_mb", 8)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"bad option in PostgreSQL URL {masked_url!r}: {exc}") from None
    if not _SCHEMA_RE.match(schema):
        raise ConfigurationError(
            f"schema name {schema!r} must be lower-case letters, digits and underscores"
        )
    if min(opts.vacuum_every, opts.reindex_mb) < 0 or opts.pool_size < 1 or opts.timeout_s <= 0:
        raise ConfigurationError(
            "pool_size must be >= 1, timeout > 0, vacuum_every and reindex_mb >= 0"
        )
    check_listen(opts)
    return opts


def check_listen(opts: Options) -> None:
    """``listen=shared`` puts LISTEN on the pool's connection, so there must be exactly one:
    with more, the connections the listener is not holding would pile up notifications."""
    if opts.listen not in ("own", "shared"):
        raise ConfigurationError(f"listen must be 'own' or 'shared', not {opts.listen!r}")
    if opts.listen == "shared" and opts.pool_size != 1:
        raise ConfigurationError(
            "listen=shared needs pool_size=1 (one connection for queries and LISTEN); "
            f"got pool_size={opts.pool_size}"
        )


def decode_errors(raw: Any) -> tuple[AttemptError, ...]:
    if not raw:
        return ()
    try:
        return tuple(msgspec.json.decode(raw, type=list[AttemptError]))
    except (msgspec.DecodeError, TypeError, ValueError):
        # Untrusted storage: a damaged history must not make the job unreadable.
        return ()


def decode_row(row: Sequence[Any]) -> JobRecord | None:
    """A stored row as a JobRecord; None when the row does not decode."""
    try:
        return JobRecord(
            id=row[0],
            task=row[1],
            queue=row[2],
            args=bytes(row[3]),
            state=JobState(row[4]),
            priority=int(row[5]),
            attempt=int(row[6]),
            max_attempts=int(row[7]),
            run_at=float(row[8]),
            created_at=float(row[9]),
            key=row[10],
            started_at=row[11],
            finished_at=row[12],
            worker_id=row[13],
            lease_expires_at=row[14],
            result=bytes(row[15]) if row[15] is not None else None,
            error=row[16],
            errors=decode_errors(row[17]),
            headers=decode_headers(row[19]),
            progress=bytes(row[20]) if row[20] is not None else None,
            limits=tuple(row[21] or ()) if len(row) > 21 else (),
            retention=_retention(row[22:25]),
        )
    except (TypeError, ValueError, IndexError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def _retention(keep: Sequence[Any]) -> JobRetention | None:
    if all(v is None for v in keep):
        return None
    return JobRetention(*(None if v is None else float(v) for v in keep))


_HEADERS = msgspec.json.Decoder(dict[str, str])


def decode_headers(raw: str | None) -> dict[str, str]:
    return _HEADERS.decode(raw) if raw else {}


def claim_order(row: Sequence[Any]) -> tuple[int, float, int]:
    """Sort key of claimed rows: the database returns an UPDATE's rows in no set order."""
    return (-int(row[5]), float(row[8]), int(row[18]))


def claimed_records(rows: list[tuple[Any, ...]]) -> list[JobRecord]:
    """Claimed rows as records, in claim order; rows that do not decode are left out."""
    rows.sort(key=claim_order)
    return [r for r in (decode_row(row) for row in rows) if r is not None]


def complete_params(results: Sequence[tuple[Lease, Outcome]]) -> dict[str, list[Any]]:
    """The array parameters of the ``complete`` query, one element per result."""
    params: dict[str, list[Any]] = {
        k: [] for k in ("ids", "worker_ids", "attempts", "kinds", "results", "errors", "delays")
    }
    for lease, outcome in results:
        kind, result, error, delay = _outcome_fields(outcome)
        params["ids"].append(lease.job_id)
        params["worker_ids"].append(lease.worker_id)
        params["attempts"].append(lease.attempt)
        params["kinds"].append(kind)
        params["results"].append(result)
        params["errors"].append(error)
        params["delays"].append(delay)
    return params


def _outcome_fields(outcome: Outcome) -> tuple[str, bytes | None, str | None, float]:
    """(kind, result, error, delay_s) of an outcome, as the ``complete`` query takes them."""
    if isinstance(outcome, Succeeded):
        return "succeeded", outcome.result, None, 0.0
    if isinstance(outcome, RetryAt):
        return "retry", None, outcome.error, float(outcome.delay_s)
    if isinstance(outcome, Dead):
        return "dead", None, outcome.error, 0.0
    if isinstance(outcome, Cancelled):
        return "cancelled", None, outcome.reason, 0.0
    return "snoozed", None, None, float(outcome.delay_s)
