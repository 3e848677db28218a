"""``/v1/schedules``: the app's schedules (as ``offload schedules`` shows them), and pausing
or resuming one. Handlers of the route table (``server/routes.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from offload.schedule_status import ScheduleStatus, schedule_statuses
from offload.server.http import HTTPError, json_response
from offload.server.schemas import ScheduleList, ScheduleOut, when

if TYPE_CHECKING:
    from offload.server.api import Api


def schedule_out(s: ScheduleStatus) -> ScheduleOut:
    return ScheduleOut(
        name=s.name,
        task=s.task,
        schedule=s.schedule,
        missed=s.missed,
        paused=s.paused,
        next_run_at=when(s.next_run_at),
        last_tick_at=when(s.last_tick_at),
        last_job_id=s.last_job_id,
        last_job_state=s.last_job_state,
    )


async def list_schedules(api: Api, request: Request) -> Response:
    rows = await api.app.call(lambda b: schedule_statuses(api.app, b))
    return json_response(ScheduleList(schedules=[schedule_out(s) for s in rows]))


async def pause_schedule(api: Api, request: Request) -> Response:
    return await _set_paused(api, request, True)


async def resume_schedule(api: Api, request: Request) -> Response:
    return await _set_paused(api, request, False)


async def _set_paused(api: Api, request: Request, paused: bool) -> Response:
    name = str(request.path_params["name"])
    if name not in api.app.schedules:
        raise HTTPError(404, "schedule_not_found", f"no schedule named {name!r}", argument="name")
    await api.app.call(lambda b: b.set_schedule_paused(name, paused))
    rows = await api.app.call(lambda b: schedule_statuses(api.app, b))
    (row,) = [s for s in rows if s.name == name]
    return json_response(schedule_out(row))
