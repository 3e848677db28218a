"""The SQLite backend's limits at claim, on the writer thread.

The writer thread is the one writer of the file (and a transaction excludes other processes'
writers), so counting and claiming in one transaction is atomic across every process: no two
claimers can both see a free slot. A claim first probes the index of waiting limited jobs; when
none is due it takes the one-statement path unchanged. Otherwise it walks the due jobs in claim
order and lets the shared :class:`~offload.backends.limits.Gate` pass over held ones, so a
burst of one key does not hide the others (they are found in the same walk).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from offload.backends.limits import INF, Gate, buckets_only, parse_bucket, usage, window_start
from offload.backends.sqlite.fairness import any_fair_due, claim_fair
from offload.backends.sqlite.queries import Q
from offload.job import ClaimRequest, LimitUsage

_log = logging.getLogger("offload.sqlite")


@dataclass
class HeldHint:
    """What the last claim of a backend instance left held, for its ``wait_for_work``: when a
    rate lets a held job go (INF: only a completion will), or None when nothing was held."""

    until: float | None = None


def held_due(until: float | None) -> float | None:
    """The next-due time a waiter uses when the last claim held jobs back."""
    return None if until is None or until == INF else until


def any_limited_due(conn: sqlite3.Connection, in_queues: str, params: dict[str, Any]) -> bool:
    sql = Q["any_limited_due"].replace("{queues}", in_queues)
    return conn.execute(sql, params).fetchone() is not None


def _gate(conn: sqlite3.Connection, now: float) -> Gate:
    counts: dict[str, int] | None = None

    def running(bucket: str) -> int:
        nonlocal counts
        if counts is None:  # the running limited jobs: at most the fleet's free slots
            counts = {}
            for (text,) in conn.execute(Q["running_limits"]):
                for b in _buckets(text):
                    counts[b] = counts.get(b, 0) + 1
        return counts.get(bucket, 0)

    def recent(bucket: str, at: float) -> Sequence[float]:
        conn.execute(Q["rate_forget"], (bucket, window_start(bucket, at)))
        return [float(t) for (t,) in conn.execute(Q["rate_recent"], (bucket,))]

    return Gate(now=now, running=running, recent=recent)


def _buckets(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    try:
        buckets = msgspec.json.decode(text, type=tuple[str, ...])
        for b in buckets_only(buckets):
            parse_bucket(b)
        return buckets
    except (msgspec.MsgspecError, ValueError):
        return ()  # claimed unlimited; its record then fails to decode and goes to dead


def claim_gated(
    conn: sqlite3.Connection,
    req: ClaimRequest,
    in_queues: str,
    params: dict[str, Any],
    hint: HeldHint | None,
) -> list[Any]:
    """Claim at most ``req.limit`` due jobs that every limit lets go; return their rows."""
    now: float = params["now"]
    if req.job_ids is None and any_fair_due(conn, in_queues, params):
        queues = list(dict.fromkeys(req.queues))
        seqs, fair_gate = claim_fair(conn, req, queues, now, lambda: _gate(conn, now), _buckets)
        return _lease(conn, seqs, fair_gate, params, hint)
    only_ids = ""
    if req.job_ids is not None:
        params["ids"] = msgspec.json.encode(list(dict.fromkeys(req.job_ids))).decode()
        only_ids = "AND id IN (SELECT value FROM json_each(:ids))"
    if req.limited_only:
        only_ids += " AND limits IS NOT NULL"
    sql = Q["gated_candidates"].replace("{queues}", in_queues).replace("{only_ids}", only_ids)
    gate = _gate(conn, now)
    chosen: list[int] = []
    rates: list[tuple[str, float]] = []
    cur = conn.execute(sql, params)  # read lazily: the walk usually stops early
    for seq, text, _, _ in cur:
        if len(chosen) >= req.limit:
            break
        buckets = _buckets(text)
        if buckets and not gate.admit(buckets):
            continue
        chosen.append(seq)
        rates.extend((b, now) for b in buckets_only(buckets) if parse_bucket(b).is_rate)
    cur.close()
    conn.executemany(Q["rate_log"], rates)
    return _lease(conn, chosen, gate, params, hint)


def _lease(
    conn: sqlite3.Connection,
    chosen: list[int],
    gate: Gate,
    params: dict[str, Any],
    hint: HeldHint | None,
) -> list[Any]:
    if hint is not None:
        hint.until = gate.held_until if gate.held else None
    if gate.held:
        _log.debug("claim held %d jobs back by their limits", gate.held)
    if not chosen:
        return []
    params["seqs"] = msgspec.json.encode(chosen).decode()
    return conn.execute(Q["claim_seqs"], params).fetchall()


def limit_usage_tx(conn: sqlite3.Connection) -> list[LimitUsage]:
    rows = conn.execute(Q["limit_usage"]).fetchall()
    return usage((queue, state == "running", _buckets(text)) for queue, state, text in rows)


__all__ = ["INF", "HeldHint", "any_limited_due", "claim_gated"]
