"""``memory://`` — the reference backend: every contract of the protocol, in plain Python.

For tests and examples. Jobs live in one process's memory and are gone when it exits. Several
backend instances (say, one per event loop) can share one :class:`MemoryStore`; a thread lock
guards it, so the app's sync bridge thread and a worker loop may use it together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

from offload.backends import retention
from offload.backends.base import Capabilities, check_purge_states
from offload.backends.common import (
    check_known,
    collapse_same_key,
    decode_cursor,
    encode_cursor,
    new_record,
)
from offload.backends.limits import fair_key_of
from offload.backends.memory import workflows
from offload.backends.memory.limits import (
    fair_pick,
    log_rates,
    memory_gate,
    memory_usage,
    next_claimable,
)
from offload.backends.memory.schedules import MemorySchedules
from offload.backends.memory.store import (
    MemoryStore,
    Waiter,
    apply_outcome,
    expired,
    finish,
    matches,
    purge_batch,
    released,
)
from offload.backends.retention import PRUNE_BATCH, past_retention
from offload.backends.unique import Decision, decide, fold_replacements, replaced
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
    LimitUsage,
    NewJob,
    WorkerInfo,
)
from offload.outcome import Outcome
from offload.workflow.record import WorkflowRecord


class MemoryBackend(MemorySchedules):
    """In-process backend. ``clock`` is the backend's clock (``time.time`` by default)."""

    capabilities = Capabilities(
        notify=True, cross_process=False, limits=True, fairness=True, workflows=True
    )

    def __init__(
        self,
        url: str = "memory://",
        *,
        store: MemoryStore | None = None,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        """``options`` (or the URL's query): the retention of finished jobs."""
        self._url = url
        opts: dict[str, Any] = dict(parse_qsl(urlsplit(url).query))
        opts.update(options)
        check_known("memory", opts, retention.OPTIONS)
        self.retention = retention.parse_retention(opts)
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
            batch, where = collapse_same_key(fold_replacements(jobs))
            stands: list[JobRecord] = []
            fresh: list[JobRecord] = []
            replacing: list[JobRecord] = []
            for new in batch:
                existing = active_keys.get((new.queue, new.key)) if new.key else None
                if existing is None and new.key is not None and new.unique_for is not None:
                    existing = self._newest_by_key(new.queue, new.key)
                decision = decide(new, existing, now)
                if existing is not None and decision is Decision.REPLACE:
                    existing = replaced(existing, new, now)
                    replacing.append(existing)
                rec = new_record(new, now) if decision is Decision.INSERT else existing
                assert rec is not None
                if decision is Decision.INSERT:
                    fresh.append(rec)
                stands.append(rec)
            out = [stands[i] for i in where]
            self._check_limits(fresh, limits or {})
            for rec in replacing:
                st.jobs[rec.id] = rec
            for rec in fresh:
                st.jobs[rec.id] = rec
                st.seq[rec.id] = st.next_seq
                st.next_seq += 1
            waiters, st.work_waiters = st.work_waiters, []
        st.wake(waiters)
        return out

    def _newest_by_key(self, queue: str, key: str) -> JobRecord | None:
        held = [j for j in self.store.jobs.values() if j.key == key and j.queue == queue]
        return max(held, key=lambda j: (j.created_at, self.store.seq[j.id]), default=None)

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
                if j.queue in queues
                and j.state in WAITING_STATES
                and j.run_at <= now
                and (j.limits or not req.limited_only)
            ]
            due.sort(key=lambda j: (-j.priority, j.run_at, st.seq[j.id]))
            out: list[JobRecord] = []
            if any(fair_key_of(j.limits) for j in due):
                due = fair_pick(st, due, req.limit, now)
            gate = memory_gate(st, now)
            for j in due:
                if len(out) >= req.limit:
                    break
                if j.limits and not gate.admit(j.limits):
                    continue
                log_rates(st, j.limits, now)
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

    async def set_progress(self, updates: Sequence[tuple[Lease, bytes]]) -> set[str]:
        st = self.store
        written: set[str] = set()
        with st.lock:
            for lease, progress in updates:
                j = self._held(lease)
                if j is not None:
                    st.jobs[j.id] = msgspec.structs.replace(j, progress=bytes(progress))
                    written.add(j.id)
        return written

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
                released = workflows.advance(st, j.id, outcome, now)  # under the same lock
                if j.limits or released:  # a slot freed, or next steps: jobs may start
                    woken.extend(st.work_waiters)
                    st.work_waiters = []
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
        """Delete finished jobs past their retention (``memory://?retention=...``, as every
        engine: :mod:`offload.backends.retention`) and forget expired worker reports."""
        await self.workers()
        now, policy = self._clock(), self.retention
        return self._purge(lambda j: past_retention(j, policy, now))

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        st = self.store
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with st.lock:
            now = self._clock()
            wanted = set(queues) - st.paused
            next_due = next_claimable(st, wanted, now)
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

    # -- workflows -------------------------------------------------------------------------

    async def enqueue_workflow(
        self, workflow: WorkflowRecord, jobs: Sequence[NewJob]
    ) -> WorkflowRecord:
        st = self.store
        with st.lock:
            stored = workflows.store_workflow(st, workflow, jobs, self._clock())
            waiters, st.work_waiters = st.work_waiters, []
        st.wake(waiters)
        return stored

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        with self.store.lock:
            return self.store.workflows.get(workflow_id)

    async def cancel_workflow(self, workflow_id: str, reason: str) -> WorkflowRecord | None:
        st = self.store
        with st.lock:
            rec, ended = workflows.cancel_workflow(st, workflow_id, reason, self._clock())
            woken = [w for job_id in ended for w in st.done_waiters.pop(job_id, [])]
        st.wake(woken)
        return rec

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

    async def limit_usage(self) -> list[LimitUsage]:
        with self.store.lock:
            return memory_usage(self.store)

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
        cutoff, wanted = self._clock() - older_than_s, set(states)
        return self._purge(
            lambda j: (
                j.state in wanted
                and (queue is None or j.queue == queue)
                and (j.finished_at or 0) <= cutoff
            )
        )

    def _purge(self, doomed_if: Callable[[JobRecord], bool]) -> int:
        deleted = 0
        while True:
            with self.store.lock:
                n = purge_batch(self.store, doomed_if, PRUNE_BATCH)
            deleted += n
            if n < PRUNE_BATCH:
                return deleted

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
