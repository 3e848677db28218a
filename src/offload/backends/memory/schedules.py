"""Schedule records of the memory backend (see ``Backend.advance_schedule``)."""

from __future__ import annotations

import msgspec

from offload.backends.memory.store import MemoryStore
from offload.schedules import ScheduleRecord, advanced


class MemorySchedules:
    store: MemoryStore

    async def schedule_records(self) -> dict[str, ScheduleRecord]:
        with self.store.lock:
            return dict(self.store.schedules)

    async def advance_schedule(self, name: str, tick: float, job_id: str | None) -> None:
        with self.store.lock:
            records = self.store.schedules
            records[name] = advanced(records.get(name), name, tick, job_id)

    async def set_schedule_paused(self, name: str, paused: bool) -> None:
        with self.store.lock:
            rec = self.store.schedules.get(name) or ScheduleRecord(name=name)
            self.store.schedules[name] = msgspec.structs.replace(rec, paused=paused)
