"""The SQLite backend's fair claims, on the writer thread (see offload.backends.fairness).

A claim whose queues hold due jobs with a fair key comes here (from the gated claim: a fair
job's limits are never empty). Per queue it reads the keys by a loose scan of the fair index
(one probe per key, which also reads the key's first due job); with fewer keys than the claim
wants, the first ``cap`` due jobs of each key; and the first ``cap`` due jobs without a key as
one more lane; :func:`claim_fairly` picks, the gate
of limits included, and the chosen rows are leased by the same statement as a gated claim's.
The writer thread makes the read, the pick and the update one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from offload.backends.fairness import UNKEYED, Candidate, Lane, claim_fairly, new_turns
from offload.backends.limits import Gate, buckets_only, parse_bucket
from offload.backends.sqlite.queries import Q
from offload.job import ClaimRequest


def any_fair_due(conn: sqlite3.Connection, in_queues: str, params: dict[str, Any]) -> bool:
    sql = Q["any_fair_due"].replace("{queues}", in_queues)
    return conn.execute(sql, params).fetchone() is not None


def gate_limits(text: str | None, decode: Any) -> Sequence[str]:
    """What the gate needs of a job's limits: nothing for a job whose only entry is its fair
    key (the usual fair job: no JSON decode), else its decoded limits. A separator of a JSON
    array of strings is always the three characters '","'."""
    if text is None or (text.startswith('["fair:') and '","' not in text):
        return ()
    result: Sequence[str] = decode(text)
    return result


def _heads(
    conn: sqlite3.Connection, queue: str, now: float, decode: Any
) -> list[tuple[str, int, Candidate]]:
    rows = conn.execute(Q["fair_heads"], {"q": queue, "now": now})
    return [(f, int(t), Candidate(s, p, r, s, gate_limits(b, decode))) for f, s, b, p, r, t in rows]


def _read(
    conn: sqlite3.Connection,
    queue: str,
    heads: Sequence[tuple[str, int, Candidate]],
    now: float,
    cap: int,
    decode: Any,
    limited_only: bool = False,
) -> list[Lane]:
    """The lanes of ``queue`` with at most ``cap`` jobs each: the heads alone for a cap of
    one (the usual case with many keys), else one read per key. ``limited_only``: the lane
    without a key holds only jobs with limits (a fair job always has some)."""
    lanes = []
    params: dict[str, Any] = {"q": queue, "now": now, "cap": cap}
    for fair, turn, head in heads:
        if cap == 1:
            lanes.append(Lane(queue, fair, turn, [head], truncated=True))
            continue
        params["fair"] = fair
        found = conn.execute(Q["fair_lane"], params)
        jobs = [Candidate(s, p, r, s, gate_limits(b, decode)) for s, b, p, r in found]
        if jobs:
            lanes.append(Lane(queue, fair, turn, jobs, truncated=len(jobs) >= cap))
    only = "AND limits IS NOT NULL" if limited_only else ""
    unkeyed_sql = Q["gated_candidates"].replace("{queues}", ":q").replace("{only_ids}", only)
    rows = conn.execute(unkeyed_sql, params).fetchmany(cap)
    if rows:
        kept = conn.execute(Q["fair_turn"], (queue, UNKEYED)).fetchone()
        lane = Lane(queue, UNKEYED, int(kept[0]) if kept else 0, [], truncated=len(rows) >= cap)
        lane.rows = [Candidate(s, p, r, s, decode(b)) for s, b, p, r in rows]
        lanes.append(lane)
    return lanes


def claim_fair(
    conn: sqlite3.Connection,
    req: ClaimRequest,
    queues: Sequence[str],
    now: float,
    new_gate: Any,
    decode: Any,
) -> tuple[list[int], Gate]:
    """The seqs a fair claim takes (in claim order) and the gate that decided; logs the
    rate claims and stamps the served keys' turns, in the caller's transaction."""
    open_queues = [q for q in queues if conn.execute(Q["is_paused"], (q,)).fetchone() is None]
    heads = {q: _heads(conn, q, now, decode) for q in open_queues}
    n = sum(len(h) for h in heads.values()) + len(open_queues)

    def read(cap: int) -> list[Lane]:
        only = req.limited_only
        return [
            lane for q in open_queues for lane in _read(conn, q, heads[q], now, cap, decode, only)
        ]

    chosen, gate = claim_fairly(read, n, req.limit, new_gate)
    rates = [(b, now) for c, _ in chosen for b in buckets_only(c.limits)]
    conn.executemany(Q["rate_log"], [(b, t) for b, t in rates if parse_bucket(b).is_rate])
    (last,) = conn.execute(Q["fair_last_turn"]).fetchone()
    stamped = new_turns(chosen, int(last))
    conn.executemany(Q["fair_set_turn"], [(q, k, t) for (q, k), t in stamped.items()])
    # A served key left with no due job forgets its turn (the unkeyed lane keeps its one row).
    seqs = msgspec.json.encode([c.ref for c, _ in chosen]).decode()
    for queue in {q for q, k in stamped if k != UNKEYED}:
        keys = sorted({k for q, k in stamped if q == queue and k != UNKEYED})
        params = {"q": queue, "now": now, "seqs": seqs, "keys": msgspec.json.encode(keys).decode()}
        conn.execute(Q["fair_forget_emptied"], params)
    return [c.ref for c, _ in chosen], gate
