"""Group commit for HTTP enqueues.

Each ``POST /v1/jobs`` hands its job to the batcher and waits. The batcher keeps at most one
backend ``enqueue`` call in flight: jobs that arrive while it is in flight wait for it to end
and then go together in the next call. Under light load a job is written at once (a batch of
one); under heavy load many requests share one transaction, which is what lets one server
process take thousands of enqueues per second on SQLite.

A backend enqueue is all or nothing, but a full queue must refuse only the requests that do
not fit. So when a batch is refused with QueueFull, the jobs of other queues are written
again without it, and the full queue's jobs are tried one at a time: the first refusal settles
the rest (they would be refused too), except jobs with a key, which may dedup onto an active
job and so do not need room.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from offload.backends.unique import outcome_of
from offload.errors import QueueFull
from offload.job import Job, JobRecord, NewJob

if TYPE_CHECKING:
    from offload.app import App

DEFAULT_MAX_BATCH = 1000  # bounds one transaction's size (and its latency) under a burst

_Pending = tuple[NewJob, "asyncio.Future[JobRecord]"]


class EnqueueBatcher:
    """Gathers concurrent enqueues into one backend call. ``enabled=False`` writes each job
    on its own (for comparison in benchmarks)."""

    def __init__(
        self,
        app: App,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        enabled: bool = True,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.max_batch = max_batch
        self.enabled = enabled
        self._on_batch = on_batch
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def enqueue(self, job: NewJob) -> JobRecord:
        """Store one job (possibly with others) and return its record (maybe a dedup's).

        The app's enqueue hooks see each request's job on its own, as a ``task.enqueue``
        call would show it, whichever batch stores it."""
        self.app.hooks.enqueueing([job])
        record = await self._enqueue(job)
        self.app.hooks.enqueued([Job(self.app, record, outcome_of(job, record))])
        return record

    async def _enqueue(self, job: NewJob) -> JobRecord:
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        if not self.enabled or self._loop is not loop:  # futures belong to one loop
            return (await self._store([job]))[0]
        fut: asyncio.Future[JobRecord] = loop.create_future()
        self._pending.append((job, fut))
        if self._flusher is None:
            # Started as a task, so requests arriving in this same loop turn join the batch.
            self._flusher = loop.create_task(self._run(), name="offload-enqueue-batcher")
        return await fut

    async def close(self) -> None:
        """Let the batch in flight (and those waiting) finish."""
        flusher = self._flusher
        if flusher is not None:
            await asyncio.gather(flusher, return_exceptions=True)

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                await self._flush(batch)
        finally:
            self._flusher = None

    async def _store(self, jobs: Sequence[NewJob]) -> list[JobRecord]:
        limits = self.app.queue_limits
        records = await self.app.call(lambda b: b.enqueue(jobs, limits=limits))
        if self._on_batch is not None:
            self._on_batch(len(jobs))
        return records

    async def _flush(self, batch: Sequence[_Pending]) -> None:
        try:
            records = await self._store([job for job, _ in batch])
        except QueueFull as full:
            if len(batch) == 1:
                _fail(batch[0][1], full)
            else:
                await self._split(batch, full)
            return
        except Exception as exc:
            for _, fut in batch:
                _fail(fut, exc)
            return
        if len(records) != len(batch):  # a backend breaking the contract: fail loudly
            error = RuntimeError(f"backend returned {len(records)} records for {len(batch)}")
            for _, fut in batch:
                _fail(fut, error)
            return
        for (_, fut), record in zip(batch, records, strict=True):
            if not fut.done():
                fut.set_result(record)

    async def _split(self, batch: Sequence[_Pending], full: QueueFull) -> None:
        others = [p for p in batch if p[0].queue != full.queue]
        if others:
            await self._flush(others)
        refused: QueueFull | None = None
        for job, fut in (p for p in batch if p[0].queue == full.queue):
            if refused is not None and job.key is None:
                _fail(fut, refused)
                continue
            try:
                record = (await self._store([job]))[0]
            except QueueFull as exc:
                refused = exc
                _fail(fut, exc)
            except Exception as exc:
                _fail(fut, exc)
            else:
                if not fut.done():
                    fut.set_result(record)


def _fail(fut: asyncio.Future[JobRecord], exc: BaseException) -> None:
    if not fut.done():  # the request may have gone away (cancelled) meanwhile
        fut.set_exception(exc)
