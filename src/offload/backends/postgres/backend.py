"""The PostgreSQL backend: a thin layer of named queries over a connection pool."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool

from offload.backends.base import Capabilities
from offload.backends.common import RECOVER_BATCH
from offload.backends.postgres import queries as q
from offload.backends.postgres.enqueue import (
    AsyncQueryConn,
    QueryConn,
    SyncQueryConn,
    enqueue_batch,
)
from offload.backends.postgres.limits import PgLimits
from offload.backends.postgres.limits import next_at as limits_next_at
from offload.backends.postgres.listener import Listener, Listening
from offload.backends.postgres.pool import make_pool
from offload.backends.postgres.recovery import Channels, recover_batch
from offload.backends.postgres.schedules import PostgresSchedules
from offload.backends.postgres.shared_listen import SharedListener
from offload.backends.postgres.steering import Steering
from offload.backends.postgres.sync import SyncPool, run_unsuspended
from offload.backends.postgres.vacuum import Vacuum
from offload.backends.postgres.waiters import ClaimMark, DoneWaiters, WorkWaiters
from offload.backends.postgres.workflows import PostgresWorkflows
from offload.errors import BackendUnavailable, ConfigurationError, ValidationError
from offload.job import ClaimRequest, JobRecord, Lease, NewJob
from offload.outcome import Outcome
from offload.workflow.record import step_of

OUT_OF_DATE = "database schema is out of date; run: offload migrate"
# While the LISTEN connection is down, idle waits are cut to this so work is still found.
_POLL_WITHOUT_LISTENER_S = 1.0
# wait_done re-reads the job this often even when notifications work (a lost one is harmless).
_DONE_POLL_S = 5.0


class PostgresBackend(Steering, PostgresSchedules, PostgresWorkflows):
    """Jobs in one PostgreSQL schema. URL options (also accepted as keywords): ``schema``
    (default ``offload``), ``auto_migrate`` (migrate on open), ``retention`` and
    ``retention_<state>`` (how long finished jobs are kept, :mod:`offload.backends.retention`;
    see :meth:`run_maintenance`), ``pool_size`` (10), ``timeout`` (seconds to
    connect or wait for a pooled connection, 5), ``vacuum_every`` (dead row versions between
    two VACUUMs this process runs, 50,000; 0: never, :mod:`.vacuum`), ``reindex_mb`` (an index
    above this size and far above what the table's rows need is rebuilt after a VACUUM, 8; 0:
    never)."""

    capabilities = Capabilities(
        notify=True, transactional=True, limits=True, fairness=True, workflows=True
    )

    def __init__(self, url: str, **options: Any) -> None:
        self._opts = q.parse_url(url, options)
        self.schema = self._opts.schema
        self.retention = self._opts.retention
        self._q = q.load_queries(self.schema)
        self._ns = q.lock_namespace(self.schema)
        self._channel = f"offload_{self.schema}"
        self._done_channel = f"offload_{self.schema}_done"
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._sync = SyncPool(self._opts, name=f"offload-{self.schema}-sync")  # enqueue_now
        self._work = WorkWaiters()
        self._limits = PgLimits(self._rows, self._ns, self._channel)
        self._vacuum = Vacuum(self._opts, self._q, self._ns)
        self._done = DoneWaiters()
        self._work_listener: Listening | None = None
        self._done_listener: Listening | None = None
        self._shared: SharedListener | None = None  # listen=shared: LISTEN on the pool's conn
        # The caller's last queue claim (a context variable: per task, so workers sharing this
        # backend do not read each other's). A worker's wait_for_work task inherits it.
        self._last_claim: contextvars.ContextVar[ClaimMark | None] = contextvars.ContextVar(
            f"offload_pg_last_claim_{id(self)}", default=None
        )

    @property
    def url(self) -> str:
        return self._opts.masked_url

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, and check (or with ``auto_migrate``, bring up to date) the schema."""
        if self._pool is not None:
            return
        pool = make_pool(self._opts, name=f"offload-{self.schema}")
        try:
            await pool.open(wait=True, timeout=self._opts.timeout_s)
            self._pool = pool
            if self._opts.listen == "shared":
                self._shared = SharedListener(pool)
            if self._opts.auto_migrate:
                await self.migrate()
            elif await self._version() < self._latest():
                raise ConfigurationError(OUT_OF_DATE)
        except BaseException as exc:
            self._pool = None
            await pool.close()
            if isinstance(exc, psycopg.Error | OSError):
                raise BackendUnavailable(f"PostgreSQL unreachable: {exc}") from None
            raise

    async def close(self) -> None:
        for listener in (self._work_listener, self._done_listener):
            if listener is not None:
                await listener.stop()
        self._work_listener = self._done_listener = self._shared = None
        self._work.wake_all()
        self._done.wake_all()
        await self._vacuum.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        # Closing the sync pool (if a sync enqueue opened it) joins its threads: short, and not
        # through a thread of the loop's executor, which is gone at interpreter exit.
        self._sync.close()

    async def migrate(self) -> int:
        """Apply pending migrations; return how many. Needs no :meth:`open` (the CLI's
        ``offload migrate`` calls it on a fresh backend). Safe to run from many processes."""
        applied = 0
        try:
            async with await psycopg.AsyncConnection.connect(
                self._opts.conninfo, autocommit=True, connect_timeout=round(self._opts.timeout_s)
            ) as conn:
                # Under the lock too: two CREATE ... IF NOT EXISTS racing (workers started
                # together on a fresh schema) fail one of them on a duplicate catalog row.
                async with conn.transaction():
                    await conn.execute(self._q["migration_lock"], {"ns": self._ns})
                    await conn.execute(self._q["create_schema"])
                    await conn.execute(self._q["create_migrations_table"])
                for version, script in q.load_migrations(self.schema):
                    async with conn.transaction():
                        await conn.execute(self._q["migration_lock"], {"ns": self._ns})
                        cur = await conn.execute(self._q["schema_version"])
                        row = await cur.fetchone()
                        if row is not None and row[0] >= version:
                            continue
                        await conn.execute(script.encode())
                        await conn.execute(self._q["record_migration"], {"version": version})
                        applied += 1
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            raise BackendUnavailable(f"PostgreSQL unreachable: {exc}") from None
        return applied

    def _latest(self) -> int:
        return max((v for v, _ in q.load_migrations(self.schema)), default=0)

    async def _version(self) -> int:
        try:
            rows = await self._rows("schema_version", {})
        except ConfigurationError:
            return 0
        return int(rows[0][0])

    # -- plumbing --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise BackendUnavailable("the PostgreSQL backend is not open")
        try:
            with self._shared.wanted() if self._shared else contextlib.nullcontext():
                async with self._pool.connection() as conn:
                    yield conn
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            raise ConfigurationError(OUT_OF_DATE) from None
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            raise BackendUnavailable(f"PostgreSQL unavailable: {exc}") from None

    async def _rows(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            return await AsyncQueryConn(conn).rows(self._q[name], params)

    async def _list_rows(self, where: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            query = self._q["list_jobs"].replace("{where}", where)
            return await AsyncQueryConn(conn).rows(query, params)

    async def _count(self, name: str, params: Mapping[str, Any]) -> int:
        async with self._conn() as conn:
            cur = await conn.execute(self._q[name], params)
            return max(cur.rowcount, 0)

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        async with self._conn() as conn:
            return await self._enqueue_on(AsyncQueryConn(conn), jobs, limits, atomic=False)

    def enqueue_now(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """:class:`~offload.backends.base.SyncEnqueue`: :meth:`enqueue`'s statements (and its
        NOTIFY) on a sync pooled connection of the caller's thread (see ``sync.py``)."""
        if self._pool is None:
            raise BackendUnavailable("the PostgreSQL backend is not open")
        try:
            with self._sync.connection() as conn:
                step = self._enqueue_on(SyncQueryConn(conn), jobs, limits, atomic=False)
                return run_unsuspended(step)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            raise ConfigurationError(OUT_OF_DATE) from None
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            raise BackendUnavailable(f"PostgreSQL unavailable: {exc}") from None

    async def enqueue_in(
        self, conn: Any, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        """Store ``jobs`` inside the caller's own transaction on ``conn`` (a psycopg 3
        ``AsyncConnection`` or ``Connection``): visible to workers only once the caller
        commits, gone if it rolls back. Within an open transaction the jobs are written under
        a savepoint, so QueueFull undoes only them. On an autocommit connection outside a
        transaction block the jobs are committed at once."""
        qc: QueryConn
        if isinstance(conn, psycopg.AsyncConnection):
            qc = AsyncQueryConn(conn)
        elif isinstance(conn, psycopg.Connection):
            qc = SyncQueryConn(conn)
        else:
            raise ValidationError(
                f"transactional enqueue needs a psycopg 3 connection, not {type(conn)!r}"
            )
        try:
            if not conn.autocommit and conn.info.transaction_status == _IDLE:
                # Begin the caller's transaction, so that ours becomes a savepoint inside it
                # instead of a transaction of its own that would commit the caller's work.
                await qc.rows("SELECT 1", {})
            return await self._enqueue_on(qc, jobs, limits, atomic=True)
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            raise BackendUnavailable(f"PostgreSQL unavailable: {exc}") from None
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            raise ConfigurationError(OUT_OF_DATE) from None

    async def _enqueue_on(
        self,
        qc: QueryConn,
        jobs: Sequence[NewJob],
        limits: Mapping[str, int] | None,
        *,
        atomic: bool,
    ) -> list[JobRecord]:
        try:
            return await enqueue_batch(
                qc,
                self._q,
                jobs,
                limits,
                channel=self._channel,
                lock_ns=self._ns,
                always_atomic=atomic,
            )
        except psycopg.errors.UniqueViolation as exc:
            raise ValidationError(f"a job with this id is already stored: {exc}") from None

    # -- consuming -------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        self._last_claim.set(None)
        if req.limit <= 0 or not req.queues or req.job_ids == ():
            return []
        params: dict[str, Any] = {
            "limit": req.limit,
            "worker_id": req.worker_id,
            "lease_s": float(req.lease_s),
        }
        if req.job_ids is not None:
            # Looked up by primary key: only these ids are candidates, whatever else waits.
            params["queues"], params["ids"] = list(req.queues), list(dict.fromkeys(req.job_ids))
            jobs = q.claimed_records(await self._rows("claim_by_ids", params))
            self._vacuum.note(2 * len(jobs))  # the claim's dead version, and its completion's
            return jobs
        if len(req.queues) == 1:
            name, params["queue"] = "claim_one_queue", req.queues[0]
        else:
            name, params["queues"] = "claim_many_queues", list(req.queues)
        listener = self._work_listener
        listening = listener is not None and listener.ready.is_set()
        epoch, heard = self._work.epoch, self._work.heard(req.queues)
        if req.limited_only or frozenset(req.queues) in self._limits.gated:
            jobs, held, next_in = await self._limits.claim(req, req.limit)
        else:
            rows = await self._rows(name, params)
            # Every row carries the next scheduled job's distance and whether jobs with limits
            # are due (the gate takes those); with nothing claimed there is one row of NULL
            # job columns to carry them.
            jobs = q.claimed_records([row for row in rows if row[0] is not None])
            held, next_in = None, (rows[0][q.N_COLUMNS] if rows else None)
            if rows and rows[0][q.N_COLUMNS + 1] and len(jobs) < req.limit:
                gated, held, _ = await self._limits.claim(req, req.limit - len(jobs))
                jobs.extend(gated)
        if listening:
            loop_now = asyncio.get_running_loop().time()
            next_at = limits_next_at(next_in, held, loop_now)
            full = len(jobs) >= req.limit
            self._last_claim.set(ClaimMark(frozenset(req.queues), epoch, heard, full, next_at))
        self._vacuum.note(2 * len(jobs))  # the claim's dead version, and its completion's
        return jobs

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        if not leases:
            return set()
        rows = await self._rows(
            "heartbeat",
            {
                "ids": [le.job_id for le in leases],
                "worker_ids": [le.worker_id for le in leases],
                "attempts": [le.attempt for le in leases],
                "lease_s": float(lease_s),
            },
        )
        return {row[0] for row in rows}

    async def set_progress(self, updates: Sequence[tuple[Lease, bytes]]) -> set[str]:
        if not updates:
            return set()
        params = {
            "ids": [le.job_id for le, _ in updates],
            "worker_ids": [le.worker_id for le, _ in updates],
            "attempts": [le.attempt for le, _ in updates],
            "progress": [bytes(p) for _, p in updates],
        }
        return {row[0] for row in await self._rows("set_progress", params)}

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        if not results:
            return
        steps = [r for r in results if step_of(r[0].job_id) is not None]
        if steps:  # workflow steps: each outcome and its workflow's advance in one transaction
            await self._complete_steps(steps)
            results = [r for r in results if step_of(r[0].job_id) is None]
            if not results:
                return
        params = q.complete_params(results)
        await self._rows(
            "complete", {**params, "channel": self._channel, "done_channel": self._done_channel}
        )
        await self._limits.finished([lease for lease, _ in results])

    async def recover(self) -> int:
        # Batch by batch, each one transaction, until a batch finds fewer than it may.
        channels = Channels(work=self._channel, done=self._done_channel)
        n = 0
        more = True
        while more:
            async with self._conn() as conn:
                written, more = await recover_batch(
                    AsyncQueryConn(conn), self._q, RECOVER_BATCH, channels
                )
            n += written
        return n

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        """After this caller's own claim (see :class:`ClaimMark`), no round trip: return at
        once if a notification came since the claim began, else sleep until one comes, the
        next scheduled job falls due, or the timeout. Otherwise ask the database first."""
        listener = self._listener(work=True)
        loop = asyncio.get_running_loop()
        with self._work.register(queues) as woken:
            mark = self._take_mark(queues, listener)
            if mark is not None:
                if mark.full or self._work.heard(queues) != mark.heard:
                    return
                next_in = None if mark.next_at is None else mark.next_at - loop.time()
            else:
                try:
                    rows = await self._rows("wake_info", {"queues": list(queues)})
                    due, next_in = bool(rows[0][0]), rows[0][1]
                except BackendUnavailable:
                    due, next_in = False, None
                    timeout_s = min(timeout_s, _POLL_WITHOUT_LISTENER_S)
                if due:
                    return
            # The jittered poll: idle workers do not all come back at the same instant.
            wait_s = timeout_s * random.uniform(0.8, 1.0)
            if next_in is not None:
                wait_s = min(wait_s, max(float(next_in), 0.0))
            if not listener.ready.is_set():
                wait_s = min(wait_s, _POLL_WITHOUT_LISTENER_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(woken), timeout=max(wait_s, 0.0))

    def _take_mark(self, queues: Sequence[str], listener: Listening) -> ClaimMark | None:
        """The caller's last claim, if it can stand in for asking the database."""
        mark = self._last_claim.get()
        if mark is None or mark.used or mark.queues != frozenset(queues):
            return None
        if not listener.ready.is_set() or mark.epoch != self._work.epoch:
            return None  # notifications may have been lost since the claim
        mark.used = True
        return mark

    async def wait_done(self, job_id: str, timeout_s: float) -> JobRecord | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        listener = self._listener(work=False)
        while True:
            with self._done.register(job_id) as woken:
                rec = await self.get(job_id)
                remaining = deadline - loop.time()
                if rec is None or rec.state.final or remaining <= 0:
                    return rec
                poll_s = _DONE_POLL_S if listener.ready.is_set() else _POLL_WITHOUT_LISTENER_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(woken), timeout=min(remaining, poll_s))

    def _listener(self, *, work: bool) -> Listening:
        """The LISTEN connection for new work or for finished jobs, started on first use (a
        producer-only process never opens one; a worker never hears about finished jobs)."""
        current = self._work_listener if work else self._done_listener
        if current is not None:
            return current
        if self._shared is not None:
            return self._shared_listener(work=work)
        listener: Listening
        if work:
            listener = Listener(
                self._opts.conninfo,
                self._channel,
                self._work.wake_queue,
                self._work.wake_all,
                self._opts.timeout_s,
            )
            self._work_listener = listener
        else:
            listener = Listener(
                self._opts.conninfo,
                self._done_channel,
                self._done.wake_ids,
                self._done.wake_all,
                self._opts.timeout_s,
            )
            self._done_listener = listener
        listener.start()
        return listener

    def _shared_listener(self, *, work: bool) -> Listening:
        """``listen=shared``: the channel rides on the pool's one connection."""
        assert self._shared is not None
        if work:
            channel = self._shared.add(self._channel, self._work.wake_queue, self._work.wake_all)
            self._work_listener = channel
        else:
            channel = self._shared.add(self._done_channel, self._done.wake_ids, self._done.wake_all)
            self._done_listener = channel
        channel.start()
        return channel

    # -- upkeep ----------------------------------------------------------------------------

    async def run_maintenance(self) -> int:
        """Delete finished jobs past their retention and forget expired worker reports;
        return how many jobs were deleted. Guarded by an advisory lock, so when many workers
        call it only one does the work (the others return 0 at once). Deletes in batches so
        that no single statement holds locks for long."""
        deleted = 0
        async with self._conn() as conn:
            cur = await conn.execute(self._q["try_maintenance_lock"], {"ns": self._ns})
            row = await cur.fetchone()
            if row is None or not row[0]:
                return 0
            try:
                await conn.execute(self._q["prune_workers"])
                deleted = await self._prune()
            finally:
                await conn.execute(self._q["maintenance_unlock"], {"ns": self._ns})
        if deleted and self._opts.vacuum_every and deleted >= self._opts.vacuum_every:
            await self._vacuum.run()  # the deleted rows' space, now (and the heap's empty tail)
        else:
            self._vacuum.note(deleted)
        return deleted


_IDLE = psycopg.pq.TransactionStatus.IDLE
