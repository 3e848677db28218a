"""Job: the handle a caller holds for one enqueued job."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import msgspec

from offload.errors import JobFailed, JobNotFound, UnknownTask
from offload.job import JobRecord, JobState

if TYPE_CHECKING:
    from offload.app import App
    from offload.backends.base import Backend

_WAIT_SLICE_S = 30.0  # a long wait is made of bounded backend waits


class Job:
    """A handle on one stored job. ``record`` is the latest snapshot; ``refresh`` updates it."""

    def __init__(self, app: App, record: JobRecord) -> None:
        self.app = app
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> JobState:
        return self.record.state

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def attempt(self) -> int:
        return self.record.attempt

    @property
    def error(self) -> str | None:
        return self.record.error

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} {self.state}>"

    async def arefresh(self) -> Job:
        record = await self.app.call(lambda b: b.get(self.id))
        if record is None:
            raise JobNotFound(self.id)
        self.record = record
        return self

    def refresh(self) -> Job:
        record = self.app.run_sync(lambda b: b.get(self.id))
        if record is None:
            raise JobNotFound(self.id)
        self.record = record
        return self

    async def aresult(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result.

        Raises :class:`offload.JobFailed` if it ended dead or cancelled, ``TimeoutError`` if it
        has not finished within ``timeout`` seconds (None waits as long as it takes).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.record.state.final:
            left = _WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {self.id} still {self.record.state} after {timeout}s")
            slice_s = min(left, _WAIT_SLICE_S)
            record = await self.app.call(functools.partial(_wait_done, self.id, slice_s))
            if record is None:
                raise JobNotFound(self.id)
            self.record = record
        return self._outcome()

    def result(self, timeout: float | None = None) -> Any:
        """``aresult`` for sync code."""
        return self.app.run_sync(lambda _b: self.aresult(timeout))

    def _outcome(self) -> Any:
        rec = self.record
        if rec.state is not JobState.SUCCEEDED:
            raise JobFailed(rec.id, rec.state.value, rec.error)
        try:
            return self.app.get_task(rec.task).decode_result(rec.result)
        except UnknownTask:  # a job of a task this process does not know: plain JSON
            return None if rec.result is None else msgspec.json.decode(rec.result)

    async def acancel(self) -> Job:
        record = await self.app.call(lambda b: b.cancel(self.id))
        if record is None:
            raise JobNotFound(self.id)
        self.record = record
        return self

    def cancel(self) -> Job:
        """Cancel the job (queued, scheduled or running). See ``Backend.cancel``."""
        record = self.app.run_sync(lambda b: b.cancel(self.id))
        if record is None:
            raise JobNotFound(self.id)
        self.record = record
        return self


async def _wait_done(job_id: str, timeout_s: float, backend: Backend) -> JobRecord | None:
    return await backend.wait_done(job_id, timeout_s)


__all__ = ["Job"]
