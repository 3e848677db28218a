"""Fair claims: the order in which a claim takes jobs when jobs with a fair key wait.

A task declared with ``fair_key="tenant_id"`` stamps each job with its key (the first entry of
its limits, ``fair:tenant_id="acme"``; see :mod:`offload.backends.limits`). In a queue where
such jobs are due, each key is a *lane* (its waiting jobs in the usual claim order: priority,
run_at, enqueue order), the jobs without a key are one more lane (key ``""``), and a claim
takes jobs in this order:

1. **priority** first, strictly: no job is taken while a due job of higher priority waits
   (and is not held by a limit);
2. then **rounds**: the first job of every lane before the second of any lane (a job's
   *rank* is its place in its lane);
3. then the lane's **turn**: the lane served longest ago first. Every lane that got jobs in a
   claim is stamped with a new turn, later than all others, in the order it was last served;
   a key the engine has no turn for (new, or forgotten once its lane emptied) comes first;
4. then the key itself (lanes of equal turn: keys never served), then run_at and enqueue
   order.

So a burst of 20,000 jobs of key A and 10 of key B enqueued after it: a claim of 100 takes
A1, B1, A2, B2, ... all of B's and 90 of A's; claims of one job alternate between the keys.
The limits' gate applies to each job as before (a held job is passed over; its lane's next
job may go).

Engines differ only in how they find the lanes: every engine decides inside its claim (the
memory store's lock, SQLite's writer thread, PostgreSQL's ``fair_claim`` function, Redis's
claim script); memory and SQLite share :func:`pick` below, PostgreSQL and Redis implement
the same order in SQL and Lua.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from offload.backends.limits import Gate

UNKEYED = ""  # the lane of the jobs without a fair key


@dataclass(frozen=True)
class Candidate:
    """One due job of a lane, as an engine read it; ``ref`` is the engine's handle on it."""

    ref: Any
    priority: int
    run_at: float
    order: int  # enqueue order, the last tie-break
    limits: Sequence[str]


@dataclass
class Lane:
    """One key's due jobs in claim order (at most ``cap`` of them: ``truncated`` if more)."""

    queue: str
    key: str
    turn: int
    rows: list[Candidate]
    truncated: bool = False


def first_cap(limit: int, lanes: int) -> int:
    """How many jobs to read per lane first: enough for ``limit`` if every lane is deep (a
    job held by a limit, or a shallow lane, makes the engine read again with more)."""
    return max(1, math.ceil(limit / max(lanes, 1)))


def ordered(lanes: Sequence[Lane]) -> list[tuple[Candidate, Lane]]:
    """Every read job in fair claim order (see the module's docstring)."""
    rows = [(c, rank, lane) for lane in lanes for rank, c in enumerate(lane.rows)]
    rows.sort(key=lambda r: (-r[0].priority, r[1], r[2].turn, r[2].key, r[0].run_at, r[0].order))
    return [(c, lane) for c, _, lane in rows]


def pick(
    lanes: Sequence[Lane], limit: int, gate: Gate
) -> tuple[list[tuple[Candidate, Lane]], bool]:
    """The jobs to take, and whether the read was too short to be sure of them (a truncated
    lane's unread jobs might come first): the engine reads again with a larger cap."""
    chosen: list[tuple[Candidate, Lane]] = []
    for c, lane in ordered(lanes):
        if len(chosen) >= limit:
            break
        if c.limits and not gate.admit(c.limits):
            continue
        chosen.append((c, lane))
    cut = [lane.rows[-1].priority for lane in lanes if lane.truncated and lane.rows]
    if not cut:
        return chosen, False
    short = len(chosen) < limit or min(c.priority for c, _ in chosen) < max(cut)
    return chosen, short


def claim_fairly(
    read: Callable[[int], list[Lane]], lanes_n: int, limit: int, new_gate: Callable[[], Gate]
) -> tuple[list[tuple[Candidate, Lane]], Gate]:
    """Read lanes (at most ``cap`` jobs each) and pick, doubling the cap until sure."""
    cap = first_cap(limit, lanes_n)
    while True:
        lanes = read(cap)
        gate = new_gate()
        chosen, short = pick(lanes, limit, gate)
        if not short:
            return chosen, gate
        cap *= 2


def new_turns(chosen: Sequence[tuple[Candidate, Lane]], after: int) -> dict[tuple[str, str], int]:
    """The turn each served lane gets, ``(queue, key) -> turn``: later than ``after`` (the
    largest turn so far), in the order each lane was last served."""
    last: dict[tuple[str, str], int] = {}
    for i, (_, lane) in enumerate(chosen):
        last[(lane.queue, lane.key)] = i
    ranked = sorted(last, key=lambda k: last[k])
    return {k: after + 1 + i for i, k in enumerate(ranked)}
