"""``memory://`` — the reference backend: every contract of the protocol, in plain Python.

For tests and examples. Jobs live in one process's memory and are gone when it exits. Several
backend instances (say, one per event loop) can share one :class:`MemoryStore`; a thread lock
guards it, so the app's sync bridge thread and a worker loop may use it together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

import msgspec

from offload.backends.base import Capabilities, check_purge_states
from offload.backends.common import collapse_same_key, decode_cursor, encode_cursor, new_record
from offload.backends.memory.store import (
    MemoryStore,
    Waiter,
    apply_outcome,
    expired,
    finish,
    matches,
    released,
)
from offload.errors import InvalidState, QueueFull
from offload.job import (
    ACTIVE_STATES,
    WAITING_STATES,
    ClaimRequest,
    JobFilter,
    JobPage,
    JobRecord,
    JobState,
    Lease,
    NewJob,
    WorkerInfo,
)
from offload.outcome import Outcome


class MemoryBackend:
    """In-process backend. ``clock`` is the backend's clock (``time.time`` by default)."""

    capabilities = Capabilities(notify=True, cross_process=False)

    def __init__(
        self,
        url: str = "memory://",
        *,
        store: MemoryStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self.store = store if store is not None else MemoryStore()
        self._clock = clock

    @property
    def url(self) -> str:
        return self._url

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        return self.enqueue_now(jobs, limits=limits)

    def enqueue_now(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """:class:`~offload.backends.base.SyncEnqueue`: the store's lock makes it safe from
        any thread, and waking a waiter goes through its loop's ``call_soon_threadsafe``."""
        st = self.store
        with st.lock:
            now = self._clock()
            active_keys = {
                (j.queue, j.key): j for j in st.jobs.values() if j.key and j.state in ACTIVE_STATES
            }
            batch, where = collapse_same_key(jobs)
            stands: list[JobRecord] = []
            fresh: list[JobRecord] = []
            for new in batch:
                existing = active_keys.get((new.queue, new.key)) if new.key else None
                rec = existing if existing is not None else new_record(new, now)
                if existing is None:
                    fresh.append(rec)
                stands.append(rec)
            out = [stands[i] for i in where]
            self._check_limits(fresh, limits or {})
            for rec in fresh:
                st.jobs[rec.id] = rec
                st.seq[rec.id] = st.next_seq
                st.next_seq += 1
            waiters, st.work_waiters = st.work_waiters, []
        st.wake(waiters)
        return out

    def _check_limits(self, fresh: Sequence[JobRecord], limits: Mapping[str, int]) -> None:
        adding: dict[str, int] = {}
        for rec in fresh:
            adding[rec.queue] = adding.get(rec.queue, 0) + 1
        for queue, n in adding.items():
            limit = limits.get(queue)
            if limit is None:
                continue
            waiting = sum(
                1
                for j in self.store.jobs.values()
                if j.queue == queue and j.state in WAITING_STATES
            )
            if waiting + n > limit:
                raise QueueFull(queue, limit)

    # -- consuming -------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        st = self.store
        with st.lock:
            now = self._clock()
            queues = set(req.queues) - st.paused
            pool = (
                st.jobs.values()
                if req.job_ids is None
                else [st.jobs[i] for i in dict.fromkeys(req.job_ids) if i in st.jobs]
            )
            due = [
                j
                for j in pool
                if j.queue in queues and j.state in WAITING_STATES and j.run_at <= now
            ]
            due.sort(key=lambda j: (-j.priority, j.run_at, st.seq[j.id]))
            out = []
            for j in due[: max(req.limit, 0)]:
                rec = msgspec.structs.replace(
                    j,
                    state=JobState.RUNNING,
                    attempt=j.attempt + 1,
                    worker_id=req.worker_id,
                    started_at=now,
                    lease_expires_at=now + req.lease_s,
                )
                st.jobs[j.id] = rec
                out.append(rec)
            return out

    def _held(self, lease: Lease) -> JobRecord | None:
        j = self.store.jobs.get(lease.job_id)
        if (
            j is None
            or j.state is not JobState.RUNNING
            or j.worker_id != lease.worker_id
            or j.attempt != lease.attempt
        ):
            return None
        return j

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        st = self.store
        held: set[str] = set()
        with st.lock:
            now = self._clock()
            for lease in leases:
                j = self._held(lease)
                if j is not None:
                    st.jobs[j.id] = msgspec.structs.replace(j, lease_expires_at=now + lease_s)
                    held.add(j.id)
        return held

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        st = self.store
        woken: list[Waiter] = []
        with st.lock:
            now = self._clock()
            for lease, outcome in results:
                j = self._held(lease)
                if j is None:
                    continue
                rec = apply_outcome(j, outcome, now)
                st.jobs[j.id] = rec
                if rec.state.final:
                    woken.extend(st.done_waiters.pop(j.id, []))
                elif rec.state in WAITING_STATES:
                    woken.extend(st.work_waiters)
                    st.work_waiters = []
        st.wake(woken)

    async def recover(self) -> int:
        st = self.store
        n = 0
        woken: list[Waiter] = []
        with st.lock:
            now = self._clock()
            for j in list(st.jobs.values()):
                if j.state is not JobState.RUNNING or (j.lease_expires_at or 0) > now:
                    continue
                n += 1
                rec = expired(j, now)
                if rec.state.final:
                    woken.extend(st.done_waiters.pop(j.id, []))
                st.jobs[j.id] = rec
            if n:
                woken.extend(st.work_waiters)
                st.work_waiters = []
        st.wake(woken)
        return n

    async def run_maintenance(self) -> int:
        """Memory jobs live as long as the process; only expired worker reports go."""
        await self.workers()
        return 0

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        st = self.store
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with st.lock:
            now = self._clock()
            wanted = set(queues) - st.paused
            next_due = min(
                (
                    j.run_at
                    for j in st.jobs.values()
                    if j.queue in wanted and j.state in WAITING_STATES
                ),
                default=None,
            )
            if next_due is not None and next_due <= now:
                return
            if next_due is not None:
                timeout_s = min(timeout_s, next_due - now)
            st.work_waiters.append((loop, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            pass
        finally:
            with st.lock:
                if (loop, fut) in st.work_waiters:
                    st.work_waiters.remove((loop, fut))

    async def wait_done(self, job_id: str, timeout_s: float) -> JobRecord | None:
        st = self.store
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with st.lock:
            j = st.jobs.get(job_id)
            if j is None or j.state.final:
                return j
            st.done_waiters.setdefault(job_id, []).append((loop, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            pass
        finally:
            with st.lock:
                waiters = st.done_waiters.get(job_id, [])
                if (loop, fut) in waiters:
                    waiters.remove((loop, fut))
                if not waiters:
                    st.done_waiters.pop(job_id, None)
        return await self.get(job_id)

    # -- inspecting and steering -----------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        with self.store.lock:
            return self.store.jobs.get(job_id)

    async def list_jobs(self, flt: JobFilter) -> JobPage:
        with self.store.lock:
            jobs = [j for j in self.store.jobs.values() if matches(j, flt)]
        jobs.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        if flt.cursor:
            after = decode_cursor(flt.cursor)
            jobs = [j for j in jobs if (j.created_at, j.id) < after]
        limit = max(1, flt.limit)
        page = jobs[:limit]
        nxt = encode_cursor(page[-1].created_at, page[-1].id) if len(jobs) > limit else None
        return JobPage(jobs=page, next_cursor=nxt)

    async def counts(self) -> dict[str, dict[JobState, int]]:
        out: dict[str, dict[JobState, int]] = {}
        with self.store.lock:
            for j in self.store.jobs.values():
                by_state = out.setdefault(j.queue, {})
                by_state[j.state] = by_state.get(j.state, 0) + 1
        return out

    async def cancel(self, job_id: str) -> JobRecord | None:
        st = self.store
        with st.lock:
            j = st.jobs.get(job_id)
            if j is None or j.state is JobState.CANCELLED:
                return j
            if j.state.final:
                raise InvalidState(f"job {job_id} already {j.state}; it cannot be cancelled")
            rec = finish(j, JobState.CANCELLED, self._clock(), error="cancelled")
            st.jobs[job_id] = rec
            woken = st.done_waiters.pop(job_id, [])
        st.wake(woken)
        return rec

    async def requeue(self, job_id: str) -> JobRecord | None:
        st = self.store
        with st.lock:
            j = st.jobs.get(job_id)
            if j is None:
                return None
            if j.state not in (JobState.DEAD, JobState.CANCELLED):
                raise InvalidState(f"job {job_id} is {j.state}; only dead or cancelled jobs retry")
            if j.key and any(
                o.key == j.key and o.queue == j.queue and o.state in ACTIVE_STATES
                for o in st.jobs.values()
            ):
                raise InvalidState(f"job {job_id}: another active job holds its key {j.key!r}")
            now = self._clock()
            rec = msgspec.structs.replace(
                released(j),
                state=JobState.QUEUED,
                attempt=0,
                run_at=now,
                finished_at=None,
                error=None,
                result=None,
            )
            st.jobs[job_id] = rec
            waiters, st.work_waiters = st.work_waiters, []
        st.wake(waiters)
        return rec

    async def delete(self, job_ids: Sequence[str]) -> int:
        st = self.store
        n = 0
        with st.lock:
            for job_id in job_ids:
                j = st.jobs.get(job_id)
                if j is not None and j.state is not JobState.RUNNING:
                    del st.jobs[job_id]
                    st.seq.pop(job_id, None)
                    n += 1
        return n

    async def purge(
        self, states: Sequence[JobState], *, older_than_s: float = 0.0, queue: str | None = None
    ) -> int:
        check_purge_states(states)
        st = self.store
        with st.lock:
            cutoff = self._clock() - older_than_s
            doomed = [
                j.id
                for j in st.jobs.values()
                if j.state in states
                and (queue is None or j.queue == queue)
                and (j.finished_at or 0) <= cutoff
            ]
            for job_id in doomed:
                del st.jobs[job_id]
                st.seq.pop(job_id, None)
        return len(doomed)

    async def set_paused(self, queue: str, paused: bool) -> None:
        st = self.store
        with st.lock:
            if paused:
                st.paused.add(queue)
                return
            st.paused.discard(queue)
            waiters, st.work_waiters = st.work_waiters, []
        st.wake(waiters)

    async def paused_queues(self) -> set[str]:
        with self.store.lock:
            return set(self.store.paused)

    async def report_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        with self.store.lock:
            now = self._clock()
            seen = msgspec.structs.replace(info, last_seen_at=now)
            self.store.workers[info.id] = (seen, now + ttl_s)

    async def remove_worker(self, worker_id: str) -> None:
        with self.store.lock:
            self.store.workers.pop(worker_id, None)

    async def workers(self) -> list[WorkerInfo]:
        with self.store.lock:
            now = self._clock()
            for wid, (_, expires) in list(self.store.workers.items()):
                if expires <= now:
                    del self.store.workers[wid]
            return [info for info, _ in self.store.workers.values()]
