"""Inspection, steering and upkeep of stored jobs: the operator-facing half of the backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import psycopg.errors

from offload.backends.base import check_purge_states
from offload.backends.common import (
    cannot_cancel,
    cannot_requeue,
    decode_cursor,
    encode_cursor,
    key_held,
)
from offload.backends.postgres import queries as q
from offload.backends.retention import PRUNE_BATCH, Retention
from offload.errors import InvalidState
from offload.job import JobFilter, JobPage, JobRecord, JobState, LimitUsage, WorkerInfo


class Steering:
    """Mixed into PostgresBackend, which supplies the plumbing declared here."""

    retention: Retention
    _ns: int
    _channel: str
    _done_channel: str

    async def _rows(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _count(self, name: str, params: Mapping[str, Any]) -> int:
        raise NotImplementedError

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._rows("get", {"id": job_id})
        return q.decode_row(rows[0]) if rows else None

    async def list_jobs(self, flt: JobFilter) -> JobPage:
        where = ["true"]
        params: dict[str, Any] = {"limit": max(1, flt.limit) + 1}
        if flt.state is not None:
            where.append("state = %(state)s")
            params["state"] = flt.state.value
        for name in ("queue", "task"):
            value = getattr(flt, name)
            if value is not None:
                where.append(f"{name} = %({name})s")
                params[name] = value
        if flt.args_contains is not None:
            where.append("position(%(needle)s::bytea in args) > 0")
            params["needle"] = flt.args_contains.encode()
        if flt.created_after is not None:
            where.append("created_at >= %(after)s")
            params["after"] = flt.created_after
        if flt.created_before is not None:
            where.append("created_at < %(before)s")
            params["before"] = flt.created_before
        if flt.cursor:
            where.append("(created_at, id) < (%(c_at)s, %(c_id)s)")
            position, params["c_id"] = decode_cursor(flt.cursor)
            params["c_at"] = float(position)
        rows = await self._list_rows(" AND ".join(where), params)
        jobs = [r for r in (q.decode_row(row) for row in rows) if r is not None]
        limit = max(1, flt.limit)
        page = jobs[:limit]
        more = len(rows) > limit and page
        nxt = encode_cursor(page[-1].created_at, page[-1].id) if more else None
        return JobPage(jobs=page, next_cursor=nxt)

    async def _list_rows(self, where: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def limit_usage(self) -> list[LimitUsage]:
        rows = await self._rows("limit_usage", {})
        return [LimitUsage(queue=q, limit=b, running=int(r), waiting=int(w)) for q, b, r, w in rows]

    async def counts(self) -> dict[str, dict[JobState, int]]:
        out: dict[str, dict[JobState, int]] = {}
        for queue, state, n in await self._rows("counts", {}):
            try:
                out.setdefault(queue, {})[JobState(state)] = int(n)
            except ValueError:
                continue  # a state this version does not know: not ours to report
        return out

    async def cancel(self, job_id: str) -> JobRecord | None:
        rows = await self._rows("cancel", {"id": job_id, "done_channel": self._done_channel})
        if rows:
            return q.decode_row(rows[0][: q.N_COLUMNS])
        current = await self.get(job_id)
        if current is None or current.state is JobState.CANCELLED:
            return current
        raise InvalidState(cannot_cancel(job_id, current.state))

    async def requeue(self, job_id: str) -> JobRecord | None:
        try:
            rows = await self._rows("requeue", {"id": job_id, "channel": self._channel})
        except psycopg.errors.UniqueViolation:
            raise InvalidState(key_held(job_id)) from None
        if rows:
            return q.decode_row(rows[0][: q.N_COLUMNS])
        current = await self.get(job_id)
        if current is None:
            return None
        raise InvalidState(cannot_requeue(job_id, current.state))

    async def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0
        return await self._count("delete", {"ids": list(job_ids)})

    async def purge(
        self, states: Sequence[JobState], *, older_than_s: float = 0.0, queue: str | None = None
    ) -> int:
        check_purge_states(states)
        deleted = 0
        for state in dict.fromkeys(states):
            deleted += await self._purge_state(state, older_than_s, queue)
        return deleted

    async def _purge_state(self, state: JobState, older_than_s: float, queue: str | None) -> int:
        """Delete ``state`` jobs finished ``older_than_s`` ago; return how many."""
        params = {"state": state.value, "older_than_s": float(older_than_s), "queue": queue}
        return await self._batches("purge_batch", params)

    async def _prune(self) -> int:
        """Delete the finished jobs past their retention: their own (their task's) where they
        have one for their state, else the backend's; return how many."""
        deleted = await self._batches("prune_own_batch", {})
        for state, age_s in self.retention.pruned():
            params = {"state": state.value, "older_than_s": float(age_s)}
            deleted += await self._batches("prune_batch", params)
        return deleted

    async def _batches(self, query: str, params: dict[str, Any]) -> int:
        """Run the DELETE ``query``, one bounded batch per statement (each its own
        transaction), until a batch comes back short; return how many rows it deleted."""
        params = {**params, "batch": PRUNE_BATCH}
        deleted = 0
        while True:
            n = await self._count(query, params)
            deleted += n
            if n < PRUNE_BATCH:
                return deleted

    async def set_paused(self, queue: str, paused: bool) -> None:
        if paused:
            await self._rows("pause", {"queue": queue})
        else:
            await self._rows("resume", {"queue": queue, "channel": self._channel})

    async def paused_queues(self) -> set[str]:
        return {row[0] for row in await self._rows("paused_queues", {})}

    async def report_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        params = {"id": info.id, "info": msgspec.json.encode(info), "ttl_s": float(ttl_s)}
        await self._rows("report_worker", params)

    async def remove_worker(self, worker_id: str) -> None:
        await self._rows("remove_worker", {"id": worker_id})

    async def workers(self) -> list[WorkerInfo]:
        out: list[WorkerInfo] = []
        for raw, last_seen in await self._rows("workers", {}):
            try:
                info = msgspec.json.decode(bytes(raw), type=WorkerInfo)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # untrusted storage: skip a report that does not decode
            out.append(msgspec.structs.replace(info, last_seen_at=float(last_seen)))
        return out
