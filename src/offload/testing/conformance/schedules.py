"""Schedule records: where each schedule's scheduler resumes, and its pause flag."""

from __future__ import annotations

import asyncio
import random

from offload.backends.base import Backend
from offload.schedules import ScheduleRecord
from offload.testing.helpers import MakeBackend


class ScheduleConformance:
    """Part of :class:`offload.testing.BackendConformance`; its fixtures come from there."""

    async def test_schedule_record_only_rises(self, backend: Backend) -> None:
        assert await backend.schedule_records() == {}
        await backend.advance_schedule("s", 100.0, "j1")
        want = ScheduleRecord(name="s", last_tick=100.0, last_job_id="j1")
        assert await backend.schedule_records() == {"s": want}
        await backend.advance_schedule("s", 60.0, "j0")  # a late scheduler: no change
        await backend.advance_schedule("s", 100.0, "jx")
        assert (await backend.schedule_records())["s"] == want
        await backend.advance_schedule("s", 160.0, None)  # skipped (paused): job id stays
        want = ScheduleRecord(name="s", last_tick=160.0, last_job_id="j1")
        assert (await backend.schedule_records())["s"] == want
        await backend.advance_schedule("s", 1_800_000_000.5, "j2")
        rec = (await backend.schedule_records())["s"]
        assert (rec.last_tick, rec.last_job_id) == (1_800_000_000.5, "j2")

    async def test_schedule_pause_flag(self, backend: Backend) -> None:
        await backend.set_schedule_paused("p", True)
        assert await backend.schedule_records() == {
            "p": ScheduleRecord(name="p", last_tick=None, paused=True)
        }
        await backend.advance_schedule("p", 5.0, "j")
        await backend.set_schedule_paused("p", True)  # idempotent
        assert (await backend.schedule_records())["p"] == ScheduleRecord(
            name="p", last_tick=5.0, last_job_id="j", paused=True
        )
        await backend.set_schedule_paused("p", False)
        await backend.advance_schedule("q", 7.0, None)
        records = await backend.schedule_records()
        assert records["p"].paused is False and records["p"].last_tick == 5.0
        assert records["q"] == ScheduleRecord(name="q", last_tick=7.0)

    async def test_concurrent_schedulers_leave_the_latest_tick(
        self, make_backend: MakeBackend
    ) -> None:
        a, b = await make_backend(), await make_backend()
        ticks = [float(t) for t in range(1, 41)]
        random.Random(7).shuffle(ticks)
        await asyncio.gather(
            *(
                (a if i % 2 else b).advance_schedule("c", t, f"j{t:.0f}")
                for i, t in enumerate(ticks)
            )
        )
        rec = (await a.schedule_records())["c"]
        assert (rec.last_tick, rec.last_job_id) == (40.0, "j40")
