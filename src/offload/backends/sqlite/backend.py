"""The ``SQLiteBackend`` class: the Backend protocol over one writer and one reader runner."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from functools import partial
from typing import Any

import msgspec

from offload.backends.base import Capabilities, check_purge_states
from offload.backends.common import RECOVER_BATCH, decode_cursor
from offload.backends.retention import Retention
from offload.backends.sqlite import doorbell
from offload.backends.sqlite.connection import (
    Call,
    ConnectionThread,
    NoFlush,
    connect,
    settle,
)
from offload.backends.sqlite.direct import DirectWriters
from offload.backends.sqlite.limits import HeldHint, held_due, limit_usage_tx
from offload.backends.sqlite.options import parse_url
from offload.backends.sqlite.queries import Q
from offload.backends.sqlite.recovery import recover_tx
from offload.backends.sqlite.retention import prune, purge_state, reclaim_space
from offload.backends.sqlite.schedules import SQLiteSchedules
from offload.backends.sqlite.transactions import (
    cancel_tx,
    claim_tx,
    counts_tx,
    decode_or_warn,
    enqueue_on_callers,
    enqueue_tx,
    heartbeat_tx,
    list_tx,
    probe_tx,
    requeue_tx,
    set_progress_tx,
    workers_tx,
)
from offload.backends.sqlite.workflows import (
    cancel_workflow_tx,
    complete_and_advance_tx,
    enqueue_workflow_tx,
    get_workflow_tx,
)
from offload.errors import BackendUnavailable
from offload.job import (
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
from offload.outcome import Outcome, RetryAt, Snoozed
from offload.workflow.record import WorkflowRecord

_log = logging.getLogger("offload.backends.sqlite")

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _wake(waiters: Sequence[_Waiter]) -> None:
    for loop, fut in waiters:
        try:
            loop.call_soon_threadsafe(settle, [(fut, None, None)])
        except RuntimeError:  # that loop is closed: nobody waits there any more
            pass


class SQLiteBackend(SQLiteSchedules):
    """The ``sqlite:///path`` backend (see the package docstring for options and guarantees)."""

    # notify: an enqueue by this instance wakes its waiters at once; one by another instance or
    # process rings the doorbell (Linux), and in any case changes PRAGMA data_version, which
    # waiters read every poll_ms: so new work wakes a waiter at once, and within poll_ms when
    # a ring is lost or there is no doorbell.
    capabilities = Capabilities(  # see enqueue_in
        notify=True, transactional=True, limits=True, fairness=True, workflows=True
    )

    def __init__(self, url: str, **options: Any) -> None:
        self._url = url
        self.path, self._opts = parse_url(url, options)
        self._poll_s: float = self._opts["poll_ms"] / 1000
        self._writer: ConnectionThread | None = None
        self._reader: ConnectionThread | None = None
        self._direct: DirectWriters | None = None  # synchronous=normal: see direct.py
        # Waiters of this instance; a lock because the app's sync bridge and a worker may call
        # one instance from two event loops.
        self._lock = threading.Lock()
        self._work_waiters: list[_Waiter] = []
        self._done_waiters: dict[str, list[_Waiter]] = {}
        self._doorbell: doorbell.Doorbell | None = None
        # Limits: what this instance's last claim held back (its waiters sleep past those
        # jobs), and the limited jobs it claimed (their completion frees a slot: it is news).
        self._held = HeldHint()
        self._limited: set[str] = set()
        if self._opts["doorbell"] and doorbell.supported():
            self._doorbell = doorbell.Doorbell(
                self.path, self._wake_work_here, self._wake_done_here, os.path.basename(self.path)
            )

    @property
    def url(self) -> str:
        return self._url

    @property
    def synchronous(self) -> str:
        """The ``PRAGMA synchronous`` level in use: ``FULL`` or ``NORMAL``."""
        return str(self._opts["synchronous"])

    @property
    def retention(self) -> Retention:
        """How long finished jobs are kept (``?retention=``, ``?retention_<state>=``)."""
        policy: Retention = self._opts["retention"]
        return policy

    async def open(self) -> None:
        if self._writer is not None:
            return
        tag = os.path.basename(self.path)
        writer = ConnectionThread(
            f"offload-sqlite-writer:{tag}",
            partial(connect, self.path, self._opts, write=True),
            True,
            busy_timeout_s=self._opts["busy_timeout_ms"] / 1000,
            relax=self._opts["synchronous"] == "FULL",
        )
        reader = ConnectionThread(
            f"offload-sqlite-reader:{tag}",
            partial(connect, self.path, self._opts, write=False),
            False,
        )
        self._writer, self._reader = writer, reader
        try:
            await writer.start()
            await reader.start()
        except BaseException:
            await self.close()
            raise
        if self._opts["synchronous"] != "FULL":
            self._direct = DirectWriters(self.path, self._opts)
        if self._doorbell is not None:
            self._doorbell.open()

    async def close(self) -> None:
        if self._doorbell is not None:
            self._doorbell.close()
        runners = (self._reader, self._writer)
        self._writer = self._reader = None
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.close()
        for runner in runners:
            if runner is not None:
                await runner.stop()

    async def _write(self, call: Call) -> Any:
        if self._writer is None:
            raise BackendUnavailable("the SQLite backend is not open")
        return await self._writer.submit(call)

    async def _read(self, call: Call) -> Any:
        if self._reader is None:
            raise BackendUnavailable("the SQLite backend is not open")
        return await self._reader.submit(call)

    def _announce(
        self, *, work: bool = False, done: Collection[str] = (), done_all: bool = False
    ) -> None:
        """After a commit: wake this instance's waiters, then ring the other listeners."""
        if work:
            self._wake_work_here()
        if done or done_all:
            self._wake_done_here(None if done_all else done)
        if self._doorbell is not None:
            try:
                self._doorbell.ring(work=work, done=done, done_all=done_all)
            except Exception:  # the write committed: a failed ring only costs latency (poll_ms)
                _log.warning("sqlite doorbell: ring failed", exc_info=True)

    # The two _here methods are also the doorbell's callbacks (on its thread): they wake local
    # waiters only, so that a ring never causes another ring.

    def _wake_work_here(self) -> None:
        with self._lock:
            waiters, self._work_waiters = self._work_waiters, []
        _wake(waiters)

    def _wake_done_here(self, job_ids: Collection[str] | None) -> None:
        with self._lock:
            if job_ids is None:  # any may have finished: all read again
                waiters = [w for ws in self._done_waiters.values() for w in ws]
                self._done_waiters = {}
            else:
                waiters = [w for j in job_ids for w in self._done_waiters.pop(j, [])]
        _wake(waiters)

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        if not jobs:
            return []
        records: list[JobRecord] = await self._write(
            partial(enqueue_tx, jobs=list(jobs), limits=dict(limits or {}))
        )
        self._announce(work=True)
        return records

    def enqueue_now(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """:class:`~offload.backends.base.SyncEnqueue`: the same transaction as
        :meth:`enqueue`, handed straight to the writer thread (joining its group commit) while
        the caller waits on a plain future, with no event loop in between; at
        ``synchronous=normal``, written by the calling thread itself when the write lock is
        free (``direct.py``)."""
        if not jobs:
            return []
        writer, direct = self._writer, self._direct
        if writer is None:
            raise BackendUnavailable("the SQLite backend is not open")
        mine = direct.enqueue(jobs, dict(limits or {})) if direct is not None else None
        if mine is not None:
            self._announce(work=True)
            return mine
        call = partial(enqueue_tx, jobs=list(jobs), limits=dict(limits or {}))
        records: list[JobRecord] = writer.submit_sync(call).result()
        self._announce(work=True)
        return records

    async def enqueue_in(
        self, conn: Any, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """Store ``jobs`` inside the caller's own transaction on ``conn``: a ``sqlite3.Connection``
        to this backend's file, usable from the calling thread. The jobs are visible once the
        caller commits and gone if it rolls back; they are written under a savepoint, so
        QueueFull undoes only them. Outside a transaction they are committed at once.

        This runs on the calling thread and holds the event loop while it writes. Begin the
        transaction with ``BEGIN IMMEDIATE`` for dedup and depth limits to be exact against
        other writers (a deferred transaction takes the write lock only at its first write).
        """
        records = enqueue_on_callers(conn, self.path, jobs, dict(limits or {}))
        self._announce(work=True)
        return records

    # -- consuming -------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        if req.limit <= 0 or not req.queues or req.job_ids == ():
            return []
        records: list[JobRecord] = await self._write(
            NoFlush(partial(claim_tx, req=req, hint=self._held))
        )
        self._limited.update(r.id for r in records if r.limits)
        return records

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        if not leases:
            return set()
        held: set[str] = await self._write(
            NoFlush(partial(heartbeat_tx, leases=leases, lease_s=lease_s))
        )
        return held

    async def set_progress(self, updates: Sequence[tuple[Lease, bytes]]) -> set[str]:
        if not updates:
            return set()
        written: set[str] = await self._write(partial(set_progress_tx, updates=list(updates)))
        return written

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        if not results:
            return
        # complete_tx, plus each workflow step's advance in the same writer transaction
        released = await self._write(partial(complete_and_advance_tx, results=list(results)))
        again = [isinstance(o, RetryAt | Snoozed) for _, o in results]
        final = [lease.job_id for (lease, _), a in zip(results, again, strict=True) if not a]
        freed = self._limited.intersection(lease.job_id for lease, _ in results)
        self._limited -= freed
        self._announce(work=any(again) or released or bool(freed), done=final)

    # -- workflows (backends/sqlite/workflows.py) ------------------------------------------

    async def enqueue_workflow(
        self, workflow: WorkflowRecord, jobs: Sequence[NewJob]
    ) -> WorkflowRecord:
        stored: WorkflowRecord = await self._write(
            partial(enqueue_workflow_tx, rec=workflow, jobs=list(jobs))
        )
        self._announce(work=True)
        return stored

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        found: WorkflowRecord | None = await self._read(
            partial(get_workflow_tx, workflow_id=workflow_id)
        )
        return found

    async def cancel_workflow(self, workflow_id: str, reason: str) -> WorkflowRecord | None:
        rec, ended = await self._write(
            partial(cancel_workflow_tx, workflow_id=workflow_id, reason=reason)
        )
        self._announce(done=ended)
        found: WorkflowRecord | None = rec
        return found

    async def recover(self) -> int:
        # Batch by batch, each one writer transaction, until a batch finds fewer than it may.
        n = 0
        more = True
        while more:
            written, more = await self._write(partial(recover_tx, limit=RECOVER_BATCH))
            n += written
        if n:  # some may have gone dead: every done waiter reads again (a spurious wake is cheap)
            self._announce(work=True, done_all=True)
        return n

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        if not queues:
            await asyncio.sleep(max(timeout_s, 0.0))
            return
        if self._doorbell is not None:
            self._doorbell.listen(doorbell.WORK)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        waiter: _Waiter = (loop, loop.create_future())
        with self._lock:
            self._work_waiters.append(waiter)
        version: int | None = None
        next_due: float | None = None
        try:
            while not waiter[1].done():
                seen, due = await self._read(partial(probe_tx, queues=queues, seen=version))
                if seen != version:
                    # Due jobs the last claim found held are not work until the file changes
                    # (a completion frees a slot) or a rate's window moves on.
                    held = version is None and self._held.until is not None
                    version, next_due = seen, (held_due(self._held.until) if held else due)
                now = time.time()
                remaining = deadline - loop.time()
                if (next_due is not None and next_due <= now) or remaining <= 0:
                    return
                sleep_s = min(remaining, self._poll_s)
                if next_due is not None:
                    sleep_s = min(sleep_s, next_due - now)
                await asyncio.wait([waiter[1]], timeout=sleep_s)
        finally:
            with self._lock:
                if waiter in self._work_waiters:
                    self._work_waiters.remove(waiter)

    async def wait_done(self, job_id: str, timeout_s: float) -> JobRecord | None:
        if self._doorbell is not None:
            self._doorbell.listen(doorbell.DONE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        while True:
            waiter: _Waiter = (loop, loop.create_future())
            with self._lock:  # registered before reading, so a completion in between wakes us
                self._done_waiters.setdefault(job_id, []).append(waiter)
            try:
                rec = await self.get(job_id)
                remaining = deadline - loop.time()
                if rec is None or rec.state.final or remaining <= 0:
                    return rec
                # the doorbell may be off or lose a ring: read again at least this often
                await asyncio.wait([waiter[1]], timeout=min(remaining, 2 * self._poll_s))
            finally:
                with self._lock:
                    waiters = self._done_waiters.get(job_id, [])
                    if waiter in waiters:
                        waiters.remove(waiter)
                    if not waiters:
                        self._done_waiters.pop(job_id, None)

    # -- inspecting and steering -----------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        def tx(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(Q["get"], (job_id,)).fetchone()
            return decode_or_warn(row) if row is not None else None

        rec: JobRecord | None = await self._read(tx)
        return rec

    async def list_jobs(self, flt: JobFilter) -> JobPage:
        cursor = decode_cursor(flt.cursor) if flt.cursor else None
        page: JobPage = await self._read(partial(list_tx, flt=flt, cursor=cursor))
        return page

    async def counts(self) -> dict[str, dict[JobState, int]]:
        out: dict[str, dict[JobState, int]] = await self._read(counts_tx)
        return out

    async def limit_usage(self) -> list[LimitUsage]:
        result: list[LimitUsage] = await self._read(limit_usage_tx)
        return result

    async def cancel(self, job_id: str) -> JobRecord | None:
        rec: JobRecord | None = await self._write(partial(cancel_tx, job_id=job_id))
        self._announce(done=[job_id])
        return rec

    async def requeue(self, job_id: str) -> JobRecord | None:
        rec: JobRecord | None = await self._write(partial(requeue_tx, job_id=job_id))
        self._announce(work=True)
        return rec

    async def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0

        def tx(conn: sqlite3.Connection) -> int:
            return int(conn.executemany(Q["delete"], [(j,) for j in job_ids]).rowcount)

        n: int = await self._write(tx)
        return n

    async def purge(
        self, states: Sequence[JobState], *, older_than_s: float = 0.0, queue: str | None = None
    ) -> int:
        check_purge_states(states)
        cutoff = time.time() - older_than_s
        deleted = 0
        for state in dict.fromkeys(states):
            deleted += await purge_state(self._write, state, cutoff, queue)
        return deleted

    async def run_maintenance(self) -> int:
        """Delete finished jobs past their retention (:mod:`offload.backends.retention`,
        ``?retention=`` and ``?retention_<state>=``) in bounded batches, give the freed pages
        back to the file system, and forget expired worker reports.

        Idempotent and cheap when there is nothing to do, so several processes sharing the
        file may all call it; the writer lock serialises them.
        """
        await self._write(lambda conn: conn.execute(Q["forget_expired_workers"], (time.time(),)))
        deleted = await prune(self._write, self._opts["retention"], time.time)
        await reclaim_space(self._write, self.path)
        return deleted

    async def set_paused(self, queue: str, paused: bool) -> None:
        name = "pause" if paused else "resume"
        await self._write(lambda conn: conn.execute(Q[name], (queue,)))
        if not paused:
            self._announce(work=True)

    async def paused_queues(self) -> set[str]:
        rows: list[tuple[str]] = await self._read(
            lambda conn: conn.execute(Q["paused_queues"]).fetchall()
        )
        return {str(q) for (q,) in rows}

    async def report_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        encoded = msgspec.json.encode(info)

        def tx(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(Q["forget_expired_workers"], (now,))
            conn.execute(Q["report_worker"], (info.id, encoded, now, now + ttl_s))

        await self._write(tx)

    async def remove_worker(self, worker_id: str) -> None:
        await self._write(lambda conn: conn.execute(Q["remove_worker"], (worker_id,)))

    async def workers(self) -> list[WorkerInfo]:
        out: list[WorkerInfo] = await self._read(workers_tx)
        return out
