"""unique_for and replace-on-conflict on PostgreSQL (the rule is ``backends/unique.py``).

Each job that needs them is settled before the batch's insert, in the same transaction: its
(queue, key) is locked (an advisory lock held to the end of the transaction), the holder is
read, and the decision is written. A job decided ``insert`` then goes through the ordinary
insert, whose ON CONFLICT still guards against an active holder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from offload.backends.postgres.queries import N_COLUMNS, decode_row
from offload.backends.unique import Decision, decide, windowed
from offload.errors import BackendUnavailable
from offload.job import JobRecord, NewJob

if TYPE_CHECKING:
    from offload.backends.postgres.enqueue import QueryConn


async def settle_windowed(
    qc: QueryConn,
    queries: Mapping[str, str],
    batch: Sequence[NewJob],
    *,
    lock_ns: int,
    channel: str,
    now: float,
) -> dict[str, JobRecord]:
    """For each windowed job of ``batch`` not to be inserted, the record that stands for it,
    by the new job's id. Call inside the enqueue's transaction."""
    settled: dict[str, JobRecord] = {}
    for new in sorted((j for j in batch if windowed(j)), key=lambda j: (j.queue, j.key or "")):
        where = {"ns": lock_ns, "queue": new.queue, "key": new.key}
        await qc.rows(queries["lock_key"], where)
        rows = await qc.rows(queries["holder_by_key"], where)
        holder = decode_row(rows[0][:N_COLUMNS]) if rows else None
        decision = decide(new, holder, now)
        if holder is None or decision is Decision.INSERT:
            continue
        if decision is Decision.REPLACE:
            holder = await _replace(qc, queries, holder, new, channel)
        settled[new.id] = holder
    return settled


async def _replace(
    qc: QueryConn, queries: Mapping[str, str], holder: JobRecord, new: NewJob, channel: str
) -> JobRecord:
    params = {
        "id": holder.id,
        "args": new.args,
        "priority": new.priority,
        "run_at": new.run_at,
        "delay_s": float(new.delay_s),
        "channel": channel,
    }
    rows = await qc.rows(queries["replace_waiting"], params)
    rec = decode_row(rows[0][:N_COLUMNS]) if rows else None
    if rec is None:  # cannot happen under the key lock: the holder was read waiting
        raise BackendUnavailable("enqueue raced with the job it replaces; try again")
    return rec
