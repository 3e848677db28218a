"""Schedule records of the SQLite backend (see ``Backend.advance_schedule``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from offload.backends.sqlite.queries import Q
from offload.schedules import ScheduleRecord


class SQLiteSchedules:
    _read: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]
    _write: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]

    async def schedule_records(self) -> dict[str, ScheduleRecord]:
        rows = await self._read(lambda conn: conn.execute(Q["schedule_records"]).fetchall())
        return {
            str(name): ScheduleRecord(
                name=str(name),
                last_tick=None if tick is None else float(tick),
                last_job_id=None if job is None else str(job),
                paused=bool(paused),
            )
            for name, tick, job, paused in rows
        }

    async def advance_schedule(self, name: str, tick: float, job_id: str | None) -> None:
        params = {"name": name, "tick": float(tick), "job_id": job_id}
        await self._write(lambda conn: conn.execute(Q["advance_schedule"], params))

    async def set_schedule_paused(self, name: str, paused: bool) -> None:
        params = {"name": name, "paused": int(paused)}
        await self._write(lambda conn: conn.execute(Q["set_schedule_paused"], params))
