"""The SQLite backend's fair claims, on the writer thread (see offload.backends.fairness).

A claim whose queues hold due jobs with a fair key comes here (from the gated claim: a fair
job's limits are never empty). Per queue it reads the keys by a loose scan of the fair index
(one probe per key), then the first ``cap`` due jobs of each key in one statement, and the
first ``cap`` due jobs without a key as one more lane; :func:`claim_fairly` picks, the gate
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


def _keys(conn: sqlite3.Connection, queue: str) -> list[tuple[str, int]]:
    return [(k, int(t)) for k, t in conn.execute(Q["fair_keys"], {"q": queue})]


def _read(
    conn: sqlite3.Connection,
    queue: str,
    keys: Sequence[tuple[str, int]],
    now: float,
    cap: int,
    decode: Any,
) -> list[Lane]:
    turns = dict(keys)
    lanes: dict[str, Lane] = {}
    params = {"q": queue, "now": now, "cap": cap}
    params["keys"] = msgspec.json.encode([k for k, _ in keys]).decode()
    for fair, seq, text, priority, run_at in conn.execute(Q["fair_lane_rows"], params):
        lane = lanes.get(fair)
        if lane is None:
            lane = lanes[fair] = Lane(queue, fair, turns[fair], [])
        lane.rows.append(Candidate(seq, priority, run_at, seq, decode(text)))
    unkeyed_sql = Q["gated_candidates"].replace("{queues}", ":q").replace("{only_ids}", "")
    rows = conn.execute(unkeyed_sql, params).fetchmany(cap)
    if rows:
        turn = conn.execute(Q["fair_turn"], (queue, UNKEYED)).fetchone()
        lane = Lane(queue, UNKEYED, int(turn[0]) if turn else 0, [])
        lane.rows = [Candidate(s, p, r, s, decode(t)) for s, t, p, r in rows]
        lanes[UNKEYED] = lane
    for lane in lanes.values():
        lane.truncated = len(lane.rows) >= cap
    return list(lanes.values())


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
    keys = {q: _keys(conn, q) for q in open_queues}
    n = sum(len(k) for k in keys.values()) + len(open_queues)

    def read(cap: int) -> list[Lane]:
        return [lane for q in open_queues for lane in _read(conn, q, keys[q], now, cap, decode)]

    chosen, gate = claim_fairly(read, n, req.limit, new_gate)
    rates = [(b, now) for c, _ in chosen for b in buckets_only(c.limits)]
    conn.executemany(Q["rate_log"], [(b, t) for b, t in rates if parse_bucket(b).is_rate])
    (last,) = conn.execute(Q["fair_last_turn"]).fetchone()
    stamped = new_turns(chosen, int(last))
    conn.executemany(Q["fair_set_turn"], [(q, k, t) for (q, k), t in stamped.items()])
    served: dict[tuple[str, str], int] = {}
    lanes = {(lane.queue, lane.key): lane for _, lane in chosen}
    for _, lane in chosen:
        served[(lane.queue, lane.key)] = served.get((lane.queue, lane.key), 0) + 1
    emptied = [
        k for k, got in served.items() if got == len(lanes[k].rows) and not lanes[k].truncated
    ]
    conn.executemany(Q["fair_forget_turn"], emptied)  # its lane is empty: forget its turn
    return [c.ref for c, _ in chosen], gate
