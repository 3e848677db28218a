"""Row decoding and the per-operation transactions of the SQLite backend.

Each ``*_tx`` function takes a ``sqlite3.Connection`` and runs on a runner thread (see
``runner.py``) inside the transaction that thread opened; ``enqueue_on_callers`` runs on the
caller's own connection and thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from offload.backends.common import (
    cannot_cancel,
    cannot_requeue,
    collapse_same_key,
    encode_cursor,
    key_held,
    new_record,
)
from offload.backends.sqlite.connection import translate
from offload.backends.sqlite.limits import HeldHint, any_limited_due, claim_gated
from offload.backends.sqlite.queries import FIELDS, Q
from offload.backends.unique import Decision, decide, fold_replacements, replaced, windowed
from offload.errors import InvalidState, QueueFull, UsageError, ValidationError
from offload.job import (
    ClaimRequest,
    JobFilter,
    JobPage,
    JobRecord,
    JobRetention,
    JobState,
    Lease,
    NewJob,
    WorkerInfo,
)
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Succeeded

_log = logging.getLogger("offload.backends.sqlite")


class _Undecodable(Exception):
    pass


def _decode(row: Sequence[Any]) -> JobRecord:
    """A JobRecord from a row of ``COLS``; raises _Undecodable when the row is malformed."""
    try:
        fields = dict(zip(FIELDS[1:18], row[1:18], strict=True))
        errors = row[18]
        fields["errors"] = msgspec.json.decode(errors) if errors else ()
        if row[19]:
            fields["headers"] = msgspec.json.decode(row[19])
        fields["progress"] = row[20]
        if row[21] is not None:
            fields["limits"] = msgspec.json.decode(row[21])
        if any(v is not None for v in row[22:25]):
            fields["retention"] = row[22:25]
        return msgspec.convert(fields, JobRecord)
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError, ValueError) as exc:
        raise _Undecodable(f"undecodable job record: {exc}") from None


def decode_or_warn(row: Sequence[Any]) -> JobRecord | None:
    try:
        return _decode(row)
    except _Undecodable as exc:
        _log.warning("skipping job row seq=%r id=%r: %s", row[0], row[1], exc)
        return None


def _bury(conn: sqlite3.Connection, row: Sequence[Any], reason: str) -> None:
    _log.warning("job row seq=%r id=%r put to dead: %s", row[0], row[1], reason)
    conn.execute(Q["bury_undecodable"], (reason, time.time(), row[0]))


# -- transactions: each runs on a runner thread with that thread's connection ---------------


def enqueue_tx(
    conn: sqlite3.Connection, jobs: Sequence[NewJob], limits: Mapping[str, int]
) -> list[JobRecord]:
    now = time.time()
    batch, where = collapse_same_key(fold_replacements(jobs))
    stored: list[JobRecord] = []
    fresh: list[JobRecord] = []
    for new in batch:
        existing = _active_by_key(conn, new.queue, new.key) if new.key is not None else None
        if windowed(new):
            existing = _windowed(conn, new, existing, now)
        if existing is not None:
            stored.append(existing)
            continue
        rec = new_record(new, now)
        stored.append(rec)
        fresh.append(rec)
    if limits:
        _check_limits(conn, fresh, limits)
    conn.executemany(Q["insert_job"], map(_insert_params, fresh))
    limited = [(msgspec.json.encode(r.limits).decode(), r.id) for r in fresh if r.limits]
    if limited:
        conn.executemany(Q["set_limits"], limited)
    return [stored[i] for i in where]


def _windowed(
    conn: sqlite3.Connection, new: NewJob, active: JobRecord | None, now: float
) -> JobRecord | None:
    """The record that stands for ``new`` under its window and conflict rule (see
    ``backends/unique.py``), written if replaced; None when ``new`` is to be inserted."""
    holder = active
    if holder is None and new.unique_for is not None:
        row = conn.execute(Q["newest_by_key"], (new.queue, new.key)).fetchone()
        holder = decode_or_warn(row) if row is not None else None
    decision = decide(new, holder, now)
    if holder is None or decision is Decision.INSERT:
        return None
    if decision is Decision.REPLACE:
        holder = replaced(holder, new, now)
        conn.execute(
            Q["replace_waiting"],
            (holder.args, holder.priority, holder.run_at, holder.state.value, holder.id),
        )
    return holder


def _insert_params(r: JobRecord) -> tuple[Any, ...]:
    headers = msgspec.json.encode(r.headers).decode() if r.headers else None
    own = r.retention or JobRetention()
    return (r.id, r.task, r.queue, r.args, r.state.value, r.priority, r.max_attempts, r.run_at,
            r.created_at, r.key, headers, own.succeeded_s, own.dead_s,
            own.cancelled_s)  # fmt: skip


def enqueue_on_callers(
    conn: Any, path: str, jobs: Sequence[NewJob], limits: Mapping[str, int]
) -> list[JobRecord]:
    """SQLiteBackend.enqueue_in's work, on the caller's connection and thread."""
    if not isinstance(conn, sqlite3.Connection):
        raise ValidationError(f"transactional enqueue needs a sqlite3.Connection, not {conn!r}")
    try:
        files = {str(row[2]) for row in conn.execute("PRAGMA database_list") if row[1] == "main"}
        if {os.path.realpath(f) for f in files} != {os.path.realpath(path)}:
            raise ValidationError(f"that connection is not to {path!r} but to {files}")
        conn.execute("SAVEPOINT offload_enqueue")
        try:
            records = enqueue_tx(conn, jobs, limits)
        except BaseException:
            conn.execute("ROLLBACK TO offload_enqueue")
            conn.execute("RELEASE offload_enqueue")
            raise
        conn.execute("RELEASE offload_enqueue")
        return records
    except sqlite3.ProgrammingError as exc:
        raise UsageError(f"cannot use that sqlite3 connection here: {exc}") from None
    except sqlite3.Error as exc:
        raise translate(exc) from None


def _active_by_key(conn: sqlite3.Connection, queue: str, key: str) -> JobRecord | None:
    row = conn.execute(Q["active_by_key"], (queue, key)).fetchone()
    if row is None:
        return None
    try:
        return _decode(row)
    except _Undecodable as exc:
        _bury(conn, row, str(exc))  # it no longer holds the key; the new job takes it
        return None


def _check_limits(
    conn: sqlite3.Connection, fresh: Sequence[JobRecord], limits: Mapping[str, int]
) -> None:
    adding: dict[str, int] = {}
    for rec in fresh:
        adding[rec.queue] = adding.get(rec.queue, 0) + 1
    for queue, n in adding.items():
        limit = limits.get(queue)
        if limit is not None:
            (waiting,) = conn.execute(Q["waiting_count"], (queue,)).fetchone()
            if waiting + n > limit:
                raise QueueFull(queue, limit)


def _queue_params(queues: Sequence[str], params: dict[str, Any]) -> str:
    for i, queue in enumerate(queues):
        params[f"q{i}"] = queue
    return ", ".join(f":q{i}" for i in range(len(queues)))


def claim_tx(
    conn: sqlite3.Connection, req: ClaimRequest, hint: HeldHint | None = None
) -> list[JobRecord]:
    now = time.time()
    params: dict[str, Any] = {
        "worker_id": req.worker_id,
        "now": now,
        "expires": now + req.lease_s,
        "limit": req.limit,
    }
    queues = tuple(dict.fromkeys(req.queues))  # one candidate block per distinct queue
    in_queues = _queue_params(queues, params)
    if any_limited_due(conn, in_queues, params):
        return _claimed(conn, claim_gated(conn, req, in_queues, params, hint))
    if req.limited_only:
        return []
    if req.job_ids is not None:
        params["ids"] = msgspec.json.encode(list(dict.fromkeys(req.job_ids))).decode()
        candidates = Q["claim_ids_candidates"].replace("{queues}", in_queues)
    else:
        candidates = " UNION ALL ".join(
            Q["claim_candidates"].replace("{queue}", f":q{i}") for i in range(len(queues))
        )
    sql = Q["claim"].replace("{candidates}", candidates)
    return _claimed(conn, conn.execute(sql, params).fetchall())


def _claimed(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[JobRecord]:
    claimed: list[tuple[int, JobRecord]] = []
    for row in rows:
        try:
            claimed.append((row[0], _decode(row)))
        except _Undecodable as exc:
            _bury(conn, row, str(exc))
    claimed.sort(key=lambda sr: (-sr[1].priority, sr[1].run_at, sr[0]))
    return [rec for _, rec in claimed]


def heartbeat_tx(conn: sqlite3.Connection, leases: Sequence[Lease], lease_s: float) -> set[str]:
    expires = time.time() + lease_s
    held: set[str] = set()
    for lease in leases:
        cur = conn.execute(Q["heartbeat"], (expires, lease.job_id, lease.worker_id, lease.attempt))
        if cur.rowcount:
            held.add(lease.job_id)
    return held


def set_progress_tx(conn: sqlite3.Connection, updates: Sequence[tuple[Lease, bytes]]) -> set[str]:
    written: set[str] = set()
    for lease, progress in updates:
        cur = conn.execute(
            Q["set_progress"], (progress, lease.job_id, lease.worker_id, lease.attempt)
        )
        if cur.rowcount:
            written.add(lease.job_id)
    return written


def complete_tx(conn: sqlite3.Connection, results: Sequence[tuple[Lease, Outcome]]) -> None:
    now = time.time()
    groups: dict[str, list[dict[str, Any]]] = {}
    for lease, outcome in results:
        p: dict[str, Any] = {
            "id": lease.job_id,
            "worker_id": lease.worker_id,
            "attempt": lease.attempt,
            "now": now,
        }
        if isinstance(outcome, Succeeded):
            name, p["result"] = "complete_succeeded", outcome.result
        elif isinstance(outcome, RetryAt):
            name, p["error"], p["run_at"] = "complete_retry", outcome.error, now + outcome.delay_s
        elif isinstance(outcome, Dead):
            name, p["error"] = "complete_dead", outcome.error
        elif isinstance(outcome, Cancelled):
            name, p["error"] = "complete_cancelled", outcome.reason
        else:
            name, p["run_at"] = "complete_snoozed", now + outcome.delay_s
        groups.setdefault(name, []).append(p)
    for name, params in groups.items():
        conn.executemany(Q[name], params)


def cancel_tx(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = conn.execute(Q["cancel"], (time.time(), job_id)).fetchone()
    if row is not None:
        return decode_or_warn(row)
    row = conn.execute(Q["get"], (job_id,)).fetchone()
    rec = decode_or_warn(row) if row is not None else None
    if rec is None or rec.state is JobState.CANCELLED:
        return rec
    raise InvalidState(cannot_cancel(job_id, rec.state))


def requeue_tx(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
    try:
        row = conn.execute(Q["requeue"], (time.time(), job_id)).fetchone()
    except sqlite3.IntegrityError:
        raise InvalidState(key_held(job_id)) from None
    if row is not None:
        return decode_or_warn(row)
    row = conn.execute(Q["get"], (job_id,)).fetchone()
    rec = decode_or_warn(row) if row is not None else None
    if rec is None:
        return None
    raise InvalidState(cannot_requeue(job_id, rec.state))


def list_tx(conn: sqlite3.Connection, flt: JobFilter, cursor: tuple[float, str] | None) -> JobPage:
    limit = max(1, flt.limit)
    params = {
        "state": flt.state.value if flt.state is not None else None,
        "queue": flt.queue,
        "task": flt.task,
        "needle": flt.args_contains.encode() if flt.args_contains is not None else None,
        "after": flt.created_after,
        "before": flt.created_before,
        "c_at": cursor[0] if cursor else None,
        "c_id": cursor[1] if cursor else None,
        "limit": limit + 1,
    }
    rows = conn.execute(Q["list_jobs"], params).fetchall()
    page = rows[:limit]
    jobs = [rec for rec in map(decode_or_warn, page) if rec is not None]
    nxt = None
    if len(rows) > limit:
        nxt = encode_cursor(page[-1][10], page[-1][1])
    return JobPage(jobs=jobs, next_cursor=nxt)


def counts_tx(conn: sqlite3.Connection) -> dict[str, dict[JobState, int]]:
    out: dict[str, dict[JobState, int]] = {}
    for queue, state, n in conn.execute(Q["counts"]):
        try:
            out.setdefault(str(queue), {})[JobState(state)] = n
        except ValueError:
            _log.warning("skipping %d job row(s) of queue %r in unknown state %r", n, queue, state)
    return out


def probe_tx(
    conn: sqlite3.Connection, queues: Sequence[str], seen: int | None
) -> tuple[int, float | None]:
    """The file's data_version, and when it changed since ``seen``, the next due run_at."""
    (version,) = conn.execute(Q["data_version"]).fetchone()
    if version == seen:
        return version, None
    params: dict[str, Any] = {}
    sql = Q["next_due"].replace("{queues}", _queue_params(queues, params))
    (due,) = conn.execute(sql, params).fetchone()
    return version, (float(due) if isinstance(due, int | float) else None)


def workers_tx(conn: sqlite3.Connection) -> list[WorkerInfo]:
    out = []
    for info, seen in conn.execute(Q["workers"], (time.time(),)):
        try:
            rec = msgspec.json.decode(info, type=WorkerInfo)
            out.append(msgspec.structs.replace(rec, last_seen_at=float(seen)))
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
            _log.warning("skipping undecodable worker row: %s", exc)
    return out
