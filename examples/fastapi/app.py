"""A FastAPI service that hands work to offload and waits for it, briefly.

``POST /thumbnails`` enqueues a job with ``aenqueue`` and waits up to ``wait`` seconds for
its result: 200 with the result, 202 with the job's id if it is not done by then (poll
``GET /thumbnails/{id}``), 503 with ``Retry-After`` when the queue is full. offload's own API
and dashboard are mounted under ``/offload``.

    uvicorn examples.fastapi.app:api          # the web service
    offload worker examples.fastapi.app:jobs  # one or more worker processes
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse

import offload
from offload.contrib.fastapi import Offload

jobs = offload.App("sqlite:///thumbnails.db", queue_limits={"default": 100})


@jobs.task
def thumbnail(image: str, width: int) -> str:
    return f"{image.rsplit('.', 1)[0]}-{width}px.png"


integration = Offload(jobs)
api = FastAPI(lifespan=integration.lifespan)
integration.mount(api, "/offload")
Jobs = Annotated[offload.App, Depends(integration.dependency)]


@api.post("/thumbnails", response_model=None)
async def make_thumbnail(
    image: str, width: int, wait: Annotated[float, Query(ge=0, le=30)] = 2.0
) -> dict[str, str] | JSONResponse:
    try:
        job = await thumbnail.aenqueue(image, width)
    except offload.QueueFull as exc:
        retry = str(math.ceil(exc.retry_after_s))
        raise HTTPException(503, detail=str(exc), headers={"Retry-After": retry}) from None
    try:
        return {"id": job.id, "thumbnail": await job.aresult(timeout=wait)}
    except TimeoutError:
        return JSONResponse({"id": job.id, "state": job.state}, status_code=202)


@api.get("/thumbnails/{job_id}")
async def thumbnail_state(job_id: str, app: Jobs) -> dict[str, object]:
    try:
        job = await app.aget_job(job_id)
    except offload.JobNotFound:
        raise HTTPException(404, detail="no such job") from None
    return {"id": job.id, "state": job.state, "done": job.state.final}
