"""What the CLI, the HTTP API and the dashboard show about schedules, computed once.

A schedule declared in the app's code is listed with its next run (from the clock of the
process asking), the latest tick passed, and the job of the latest enqueued tick with that
job's state. A record whose schedule no longer exists in the code is listed too (it says so),
so an operator can see a schedule left over from an older release.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from offload.job import JobState

if TYPE_CHECKING:
    from offload.app import App
    from offload.backends.base import Backend


class ScheduleStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    task: str | None  # None: not declared in this app's code
    schedule: str  # e.g. "cron */5 * * * * (Europe/Paris)", "every 30s"
    missed: str | None
    paused: bool
    next_run_at: float | None  # None while paused or not declared
    last_tick_at: float | None
    last_job_id: str | None
    last_job_state: JobState | None  # None: no such job (not yet, or deleted)


async def schedule_statuses(
    app: App, backend: Backend, now: float | None = None
) -> list[ScheduleStatus]:
    """Every declared schedule and every stored record, by name."""
    now = time.time() if now is None else now
    records = await backend.schedule_records()
    out: list[ScheduleStatus] = []
    for name in sorted(set(app.schedules) | set(records)):
        rec = records.get(name)
        bound = app.schedules.get(name)
        paused = bool(rec and rec.paused)
        job = await backend.get(rec.last_job_id) if rec and rec.last_job_id else None
        out.append(
            ScheduleStatus(
                name=name,
                task=bound.task.name if bound else None,
                schedule=bound.schedule.describe() if bound else "(not declared in the code)",
                missed=bound.schedule.missed if bound else None,
                paused=paused,
                next_run_at=(
                    bound.schedule.next_after(now) if bound is not None and not paused else None
                ),
                last_tick_at=rec.last_tick if rec else None,
                last_job_id=rec.last_job_id if rec else None,
                last_job_state=job.state if job else None,
            )
        )
    return out
