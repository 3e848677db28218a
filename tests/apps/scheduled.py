"""An app with an every-second schedule, for tests that run real ``offload`` processes
against it (tests/test_schedules_processes.py). Its URL comes from ``--url``."""

from __future__ import annotations

import offload

app = offload.App("memory://")


# A grace of 15 s: a tick is late (not missed) for that long, so a loaded CI machine that
# stalls every scheduler for a few seconds still runs each tick.
@app.task(name="beat", schedule=offload.Every(seconds=1, grace=15))
def beat() -> None:
    return None
