"""The dashboard's Schedules page: each schedule's next and last run, its last job and that
job's state, and (for admins) pause and resume."""

from __future__ import annotations

import time

from starlette.responses import Response

from offload.schedule_status import schedule_statuses
from offload.server.dashboard.actions import redirect
from offload.server.dashboard.core import Core, Page
from offload.server.dashboard.params import BadRequest, message, query_of

MAX_SCHEDULE_NAME = 200


class SchedulePages:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def schedules(self, page: Page) -> Response:
        msg = message(query_of(page.request, ("msg",)).get("msg"))
        app = self.core.app
        rows = await self.core.call(lambda b: schedule_statuses(app, b))
        return self.core.render(
            page, "schedules.html", nav="schedules", rows=rows, msg=msg, now=time.time()
        )

    async def pause(self, page: Page, form: dict[str, str]) -> Response:
        name = form.get("name", "")
        paused = form.get("paused", "")
        if not name or len(name) > MAX_SCHEDULE_NAME or paused not in ("0", "1"):
            raise BadRequest("give a schedule name and paused=1 or paused=0")
        if name not in self.core.app.schedules:
            raise BadRequest("no schedule of that name is declared in this app")
        await self.core.call(lambda b: b.set_schedule_paused(name, paused == "1"))
        done = "schedule_paused" if paused == "1" else "schedule_resumed"
        return redirect(page.url("/schedules", {"msg": done}))
