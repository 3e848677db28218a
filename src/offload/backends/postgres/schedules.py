"""Schedule records of the PostgreSQL backend (see ``Backend.advance_schedule``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offload.schedules import ScheduleRecord


class PostgresSchedules:
    async def _rows(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # the backend's

    async def schedule_records(self) -> dict[str, ScheduleRecord]:
        return {
            name: ScheduleRecord(name=name, last_tick=tick, last_job_id=job, paused=paused)
            for name, tick, job, paused in await self._rows("schedule_records", {})
        }

    async def advance_schedule(self, name: str, tick: float, job_id: str | None) -> None:
        await self._rows("advance_schedule", {"name": name, "tick": float(tick), "job_id": job_id})

    async def set_schedule_paused(self, name: str, paused: bool) -> None:
        await self._rows("set_schedule_paused", {"name": name, "paused": paused})
