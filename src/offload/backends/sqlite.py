"""``sqlite:///path`` — the embedded default backend: one SQLite file, standard library only.

``sqlite:///offload.db`` is relative to the working directory, ``sqlite:////var/lib/x.db``
absolute. Query options (also accepted as keyword arguments, which win over the URL):
``synchronous=full|normal`` (default full), ``busy_timeout_ms`` (default 5000), ``poll_ms``
(default 50: how often waiters look at the file for other processes' writes).

Clock: the backend's clock is the host's ``time.time()``. Every process sharing a file runs on
the same machine, so they all read the same clock.

Threads: an instance owns a *writer* thread, the only user of its write connection, and a
*reader* thread with a second connection (WAL readers never block the writer). Coroutines hand a
function to a thread and await a future that the thread resolves with
``loop.call_soon_threadsafe``. The writer runs every request waiting in its queue in ONE
transaction (group commit), each request in its own savepoint so that one failing request (say,
``QueueFull``) does not undo the others. A caller cancelled while its request is queued does not
withdraw the request.

Several processes may share one file: each write transaction starts with ``BEGIN IMMEDIATE``,
which takes the file's write lock up front (waiting up to ``busy_timeout_ms``), so two claimants
never read the same due rows. A lock still held after that becomes BackendUnavailable.

Untrusted rows: a row that does not decode into a :class:`JobRecord` is put to ``dead`` with the
reason when a claim (or a dedup lookup) meets it, so it cannot block its queue; reads (get,
list_jobs, counts, workers) skip it and log a warning.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

from offload.backends.base import LEASE_EXPIRED_ERROR, Capabilities, check_purge_states
from offload.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidState,
    QueueFull,
    UsageError,
    ValidationError,
    describe,
)
from offload.job import (
    ClaimRequest,
    JobFilter,
    JobPage,
    JobRecord,
    JobState,
    Lease,
    NewJob,
    WorkerInfo,
)
from offload.outcome import Cancelled, Dead, Outcome, RetryAt, Snoozed, Succeeded

_log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # PRAGMA user_version of the file; a migration bumps it.

_COLS = (
    "seq, id, task, queue, args, state, priority, attempt, max_attempts, run_at, created_at, "
    "key, started_at, finished_at, worker_id, lease_expires_at, result, error, errors"
)
_FIELDS = tuple(_COLS.split(", "))


def _load_queries() -> dict[str, str]:
    text = (Path(__file__).parent / "sqlite.sql").read_text(encoding="utf-8")
    queries: dict[str, str] = {}
    for block in text.split("-- name: ")[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip().replace("{cols}", _COLS)
    return queries


_Q = _load_queries()


def _parse_url(url: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc not in ("", "localhost"):
        raise ConfigurationError(f"not a sqlite URL: {url!r} (expected sqlite:///path/to/file.db)")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:":
        raise ConfigurationError(
            f"{url!r} names no file: use sqlite:///relative.db or sqlite:////absolute.db "
            "(an in-memory SQLite cannot be shared by the reader and writer; use memory://)"
        )
    opts: dict[str, Any] = dict(parse_qsl(parts.query))
    opts.update(options)
    known = {"synchronous", "busy_timeout_ms", "poll_ms", "retention"}
    unknown = set(opts) - known
    if unknown:
        raise ConfigurationError(
            f"unknown sqlite option(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}"
        )
    sync = str(opts.get("synchronous", "full")).upper()
    if sync not in ("FULL", "NORMAL"):
        raise ConfigurationError(f"synchronous must be 'full' or 'normal', not {sync.lower()!r}")
    try:
        busy_ms = int(opts.get("busy_timeout_ms", 5000))
        poll_ms = int(opts.get("poll_ms", 50))
        retention = float(opts["retention"]) if opts.get("retention") is not None else None
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"sqlite option is not a number: {exc}") from None
    if retention is not None and retention < 0:
        raise ConfigurationError("retention must be >= 0 seconds")
    if busy_ms < 0 or poll_ms <= 0:
        raise ConfigurationError("busy_timeout_ms must be >= 0 and poll_ms > 0")
    return os.path.abspath(path), {
        "synchronous": sync,
        "busy_timeout_ms": busy_ms,
        "poll_ms": poll_ms,
        "retention": retention,
    }


class _Undecodable(Exception):
    pass


def _decode(row: Sequence[Any]) -> JobRecord:
    """A JobRecord from a row of ``_COLS``; raises _Undecodable when the row is malformed."""
    try:
        fields = dict(zip(_FIELDS[1:18], row[1:18], strict=True))
        errors = row[18]
        fields["errors"] = msgspec.json.decode(errors) if errors else ()
        return msgspec.convert(fields, JobRecord)
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError, ValueError) as exc:
        raise _Undecodable(f"undecodable job record: {exc}") from None


def _decode_or_warn(row: Sequence[Any]) -> JobRecord | None:
    try:
        return _decode(row)
    except _Undecodable as exc:
        _log.warning("skipping job row seq=%r id=%r: %s", row[0], row[1], exc)
        return None


def _bury(conn: sqlite3.Connection, row: Sequence[Any], reason: str) -> None:
    _log.warning("job row seq=%r id=%r put to dead: %s", row[0], row[1], reason)
    conn.execute(_Q["bury_undecodable"], (reason, time.time(), row[0]))


# -- transactions: each runs on a runner thread with that thread's connection ---------------


def _enqueue_tx(
    conn: sqlite3.Connection, jobs: Sequence[NewJob], limits: Mapping[str, int]
) -> list[JobRecord]:
    now = time.time()
    out: list[JobRecord] = []
    fresh: list[JobRecord] = []
    by_key: dict[str, JobRecord] = {}
    for new in jobs:
        if new.key is not None:
            existing = by_key.get(new.key) or _active_by_key(conn, new.key)
            if existing is not None:
                out.append(existing)
                continue
        run_at = new.run_at if new.run_at is not None else now + new.delay_s
        rec = JobRecord(
            id=new.id,
            task=new.task,
            queue=new.queue,
            args=new.args,
            state=JobState.QUEUED if run_at <= now else JobState.SCHEDULED,
            priority=new.priority,
            attempt=0,
            max_attempts=new.max_attempts,
            run_at=run_at,
            created_at=now,
            key=new.key,
        )
        if new.key is not None:
            by_key[new.key] = rec
        out.append(rec)
        fresh.append(rec)
    if limits:
        _check_limits(conn, fresh, limits)
    conn.executemany(_Q["insert_job"], map(_insert_params, fresh))
    return out


def _insert_params(r: JobRecord) -> tuple[Any, ...]:
    return (r.id, r.task, r.queue, r.args, r.state.value, r.priority, r.max_attempts, r.run_at,
            r.created_at, r.key)  # fmt: skip


def _enqueue_on_callers(
    conn: Any, path: str, jobs: Sequence[NewJob], limits: Mapping[str, int]
) -> list[JobRecord]:
    """SQLiteBackend.enqueue_in's work, on the caller's connection and thread."""
    if not isinstance(conn, sqlite3.Connection):
        raise ValidationError(f"transactional enqueue needs a sqlite3.Connection, not {conn!r}")
    try:
        files = {str(row[2]) for row in conn.execute("PRAGMA database_list") if row[1] == "main"}
        if {os.path.realpath(f) for f in files} != {os.path.realpath(path)}:
            raise ValidationError(f"that connection is not to {path!r} but to {files}")
        conn.execute("SAVEPOINT offload_enqueue")
        try:
            records = _enqueue_tx(conn, jobs, limits)
        except BaseException:
            conn.execute("ROLLBACK TO offload_enqueue")
            conn.execute("RELEASE offload_enqueue")
            raise
        conn.execute("RELEASE offload_enqueue")
        return records
    except sqlite3.ProgrammingError as exc:
        raise UsageError(f"cannot use that sqlite3 connection here: {exc}") from None
    except sqlite3.Error as exc:
        raise _translate(exc) from None


def _active_by_key(conn: sqlite3.Connection, key: str) -> JobRecord | None:
    row = conn.execute(_Q["active_by_key"], (key,)).fetchone()
    if row is None:
        return None
    try:
        return _decode(row)
    except _Undecodable as exc:
        _bury(conn, row, str(exc))  # it no longer holds the key; the new job takes it
        return None


def _check_limits(
    conn: sqlite3.Connection, fresh: Sequence[JobRecord], limits: Mapping[str, int]
) -> None:
    adding: dict[str, int] = {}
    for rec in fresh:
        adding[rec.queue] = adding.get(rec.queue, 0) + 1
    for queue, n in adding.items():
        limit = limits.get(queue)
        if limit is not None:
            (waiting,) = conn.execute(_Q["waiting_count"], (queue,)).fetchone()
            if waiting + n > limit:
                raise QueueFull(queue, limit)


def _queue_params(queues: Sequence[str], params: dict[str, Any]) -> str:
    for i, queue in enumerate(queues):
        params[f"q{i}"] = queue
    return ", ".join(f":q{i}" for i in range(len(queues)))


def _claim_tx(conn: sqlite3.Connection, req: ClaimRequest) -> list[JobRecord]:
    now = time.time()
    params: dict[str, Any] = {
        "worker_id": req.worker_id,
        "now": now,
        "expires": now + req.lease_s,
        "limit": req.limit,
    }
    queues = tuple(dict.fromkeys(req.queues))  # one candidate block per distinct queue
    _queue_params(queues, params)
    candidates = " UNION ALL ".join(
        _Q["claim_candidates"].replace("{queue}", f":q{i}") for i in range(len(queues))
    )
    sql = _Q["claim"].replace("{candidates}", candidates)
    claimed: list[tuple[int, JobRecord]] = []
    for row in conn.execute(sql, params).fetchall():
        try:
            claimed.append((row[0], _decode(row)))
        except _Undecodable as exc:
            _bury(conn, row, str(exc))
    claimed.sort(key=lambda sr: (-sr[1].priority, sr[1].run_at, sr[0]))
    return [rec for _, rec in claimed]


def _heartbeat_tx(conn: sqlite3.Connection, leases: Sequence[Lease], lease_s: float) -> set[str]:
    expires = time.time() + lease_s
    held: set[str] = set()
    for lease in leases:
        cur = conn.execute(_Q["heartbeat"], (expires, lease.job_id, lease.worker_id, lease.attempt))
        if cur.rowcount:
            held.add(lease.job_id)
    return held


def _complete_tx(conn: sqlite3.Connection, results: Sequence[tuple[Lease, Outcome]]) -> None:
    now = time.time()
    groups: dict[str, list[dict[str, Any]]] = {}
    for lease, outcome in results:
        p: dict[str, Any] = {
            "id": lease.job_id,
            "worker_id": lease.worker_id,
            "attempt": lease.attempt,
            "now": now,
        }
        if isinstance(outcome, Succeeded):
            name, p["result"] = "complete_succeeded", outcome.result
        elif isinstance(outcome, RetryAt):
            name, p["error"], p["run_at"] = "complete_retry", outcome.error, now + outcome.delay_s
        elif isinstance(outcome, Dead):
            name, p["error"] = "complete_dead", outcome.error
        elif isinstance(outcome, Cancelled):
            name, p["error"] = "complete_cancelled", outcome.reason
        else:
            name, p["run_at"] = "complete_snoozed", now + outcome.delay_s
        groups.setdefault(name, []).append(p)
    for name, params in groups.items():
        conn.executemany(_Q[name], params)


def _cancel_tx(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = conn.execute(_Q["cancel"], (time.time(), job_id)).fetchone()
    if row is not None:
        return _decode_or_warn(row)
    row = conn.execute(_Q["get"], (job_id,)).fetchone()
    rec = _decode_or_warn(row) if row is not None else None
    if rec is None or rec.state is JobState.CANCELLED:
        return rec
    raise InvalidState(f"job {job_id} already {rec.state}; it cannot be cancelled")


def _retry_tx(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
    try:
        row = conn.execute(_Q["retry"], (time.time(), job_id)).fetchone()
    except sqlite3.IntegrityError:
        raise InvalidState(f"job {job_id}: another active job holds its key") from None
    if row is not None:
        return _decode_or_warn(row)
    row = conn.execute(_Q["get"], (job_id,)).fetchone()
    rec = _decode_or_warn(row) if row is not None else None
    if rec is None:
        return None
    raise InvalidState(f"job {job_id} is {rec.state}; only dead or cancelled jobs retry")


def _list_tx(conn: sqlite3.Connection, flt: JobFilter, cursor: tuple[float, str] | None) -> JobPage:
    limit = max(1, flt.limit)
    params = {
        "state": flt.state.value if flt.state is not None else None,
        "queue": flt.queue,
        "task": flt.task,
        "needle": flt.args_contains.encode() if flt.args_contains is not None else None,
        "after": flt.created_after,
        "before": flt.created_before,
        "c_at": cursor[0] if cursor else None,
        "c_id": cursor[1] if cursor else None,
        "limit": limit + 1,
    }
    rows = conn.execute(_Q["list_jobs"], params).fetchall()
    page = rows[:limit]
    jobs = [rec for rec in map(_decode_or_warn, page) if rec is not None]
    nxt = None
    if len(rows) > limit:
        nxt = base64.urlsafe_b64encode(msgspec.json.encode([page[-1][10], page[-1][1]])).decode()
    return JobPage(jobs=jobs, next_cursor=nxt)


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, job_id = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()))
        return float(created_at), str(job_id)
    except (ValueError, TypeError, msgspec.DecodeError) as exc:
        raise ValueError("invalid cursor") from exc


def _counts_tx(conn: sqlite3.Connection) -> dict[str, dict[JobState, int]]:
    out: dict[str, dict[JobState, int]] = {}
    for queue, state, n in conn.execute(_Q["counts"]):
        try:
            out.setdefault(str(queue), {})[JobState(state)] = n
        except ValueError:
            _log.warning("skipping %d job row(s) of queue %r in unknown state %r", n, queue, state)
    return out


def _probe_tx(
    conn: sqlite3.Connection, queues: Sequence[str], seen: int | None
) -> tuple[int, float | None]:
    """The file's data_version, and when it changed since ``seen``, the next due run_at."""
    (version,) = conn.execute(_Q["data_version"]).fetchone()
    if version == seen:
        return version, None
    params: dict[str, Any] = {}
    sql = _Q["next_due"].replace("{queues}", _queue_params(queues, params))
    (due,) = conn.execute(sql, params).fetchone()
    return version, (float(due) if isinstance(due, int | float) else None)


def _workers_tx(conn: sqlite3.Connection) -> list[WorkerInfo]:
    out = []
    for info, seen in conn.execute(_Q["workers"], (time.time(),)):
        try:
            rec = msgspec.json.decode(info, type=WorkerInfo)
            out.append(msgspec.structs.replace(rec, last_seen_at=float(seen)))
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
            _log.warning("skipping undecodable worker row: %s", exc)
    return out


# -- the threads ----------------------------------------------------------------------------

_Call = Callable[[sqlite3.Connection], Any]
_Request = tuple[_Call | None, "asyncio.Future[Any]"]  # a None call asks the thread to stop
_Settled = tuple["asyncio.Future[Any]", Any, BaseException | None]

_MAX_BATCH = 512  # requests per group commit: bounds one transaction's latency


def _settle(items: Sequence[_Settled]) -> None:
    for fut, value, exc in items:
        if fut.done():  # the caller was cancelled
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


class _Runner:
    """One thread owning one connection. Requests run in submission order; on the writer,
    all requests waiting together run in one transaction."""

    def __init__(self, name: str, connect: Callable[[], sqlite3.Connection], write: bool):
        self._connect = connect
        self._write = write
        self._requests: SimpleQueue[_Request] = SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._stopping = False

    async def start(self) -> None:
        """Start the thread and connect; raises what connecting raised (thread then gone)."""
        ready = self.submit(lambda conn: None)
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread.join()
            raise

    def submit(self, call: _Call) -> asyncio.Future[Any]:
        if self._stopping:
            raise BackendUnavailable("the SQLite backend is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests.put((call, fut))
        return fut

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if not self._thread.is_alive():
            return
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests.put((None, done))
        await done
        self._thread.join()  # the thread resolved `done` as its last act

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # report to every waiting caller, then end
            self._fail_pending(_translate(exc))
            return
        stop: _Request | None = None
        try:
            while stop is None:
                batch = [self._requests.get()]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(self._requests.get_nowait())
                    except Empty:
                        break
                for i, (call, _) in enumerate(batch):
                    if call is None:
                        stop, batch = batch[i], batch[:i]
                        break
                if batch:
                    run = self._transaction if self._write else self._each
                    self._deliver(run(conn, batch))
        finally:
            conn.close()
            self._fail_pending(BackendUnavailable("the SQLite backend is closed"))
            if stop is not None:
                self._deliver([(stop[1], None, None)])

    def _fail_pending(self, exc: BaseException) -> None:
        self._stopping = True
        pending: list[_Settled] = []
        while True:
            try:
                _, fut = self._requests.get_nowait()
            except Empty:
                break
            pending.append((fut, None, exc))
        self._deliver(pending)

    @staticmethod
    def _each(conn: sqlite3.Connection, batch: Sequence[_Request]) -> list[_Settled]:
        out: list[_Settled] = []
        for call, fut in batch:
            try:
                out.append((fut, call(conn) if call else None, None))
            except Exception as exc:
                out.append((fut, None, _translate(exc)))
        return out

    @staticmethod
    def _transaction(conn: sqlite3.Connection, batch: Sequence[_Request]) -> list[_Settled]:
        out: list[_Settled] = []
        nested = len(batch) > 1
        try:
            conn.execute("BEGIN IMMEDIATE")
            for call, fut in batch:
                if nested:
                    conn.execute("SAVEPOINT request")
                try:
                    out.append((fut, call(conn) if call else None, None))
                except Exception as exc:
                    if isinstance(exc, sqlite3.Error) and not conn.in_transaction:
                        raise  # the engine rolled the whole transaction back
                    conn.execute("ROLLBACK TO request" if nested else "ROLLBACK")
                    out.append((fut, None, _translate(exc)))
                if nested:
                    conn.execute("RELEASE request")
            if conn.in_transaction:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            err = _translate(exc)
            return [(fut, None, err) for _, fut in batch]
        return out

    @staticmethod
    def _deliver(items: Sequence[_Settled]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}
        for item in items:
            by_loop.setdefault(item[0].get_loop(), []).append(item)
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, group)
            except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
                pass


def _translate(exc: BaseException) -> BaseException:
    if not isinstance(exc, sqlite3.Error):
        return exc
    if "locked" in str(exc) or "busy" in str(exc):
        return BackendUnavailable(
            f"SQLite database is locked (another process held it past busy_timeout_ms): {exc}"
        )
    return BackendUnavailable(f"SQLite error: {describe(exc)}")


def _connect(path: str, opts: Mapping[str, Any], *, write: bool) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, timeout=opts["busy_timeout_ms"] / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackendUnavailable(f"cannot open SQLite database {path!r}: {exc}") from None
    try:
        if not write:
            conn.execute("PRAGMA query_only = ON")
            return conn
        _use_wal(conn, path, opts["busy_timeout_ms"] / 1000)
        conn.execute(f"PRAGMA synchronous = {opts['synchronous']}")
        conn.execute("PRAGMA cache_size = -16000")  # 16 MB: the hot indexes stay in memory
        _migrate(conn, path)
        return conn
    except sqlite3.Error as exc:
        conn.close()
        raise BackendUnavailable(f"cannot open SQLite database {path!r}: {exc}") from None
    except BaseException:
        conn.close()
        raise


def _use_wal(conn: sqlite3.Connection, path: str, timeout_s: float) -> None:
    # Switching a fresh file to WAL needs it to itself, and SQLite does not call the busy
    # handler for that: processes opening one new file together would fail at once. Retry.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        raise BackendUnavailable(f"SQLite database {path!r} cannot use WAL (mode {mode})")


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    conn.execute("BEGIN IMMEDIATE")  # several processes may open a fresh file at once
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"{path!r} has schema version {version}; this offload knows {SCHEMA_VERSION}"
                " (upgrade offload)"
            )
        if version < SCHEMA_VERSION:
            lines = [ln for ln in _Q["schema"].splitlines() if not ln.lstrip().startswith("--")]
            for statement in "\n".join(lines).split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _wake(waiters: Sequence[_Waiter]) -> None:
    for loop, fut in waiters:
        if not loop.is_closed():
            loop.call_soon_threadsafe(_settle, [(fut, None, None)])


class SQLiteBackend:
    """The ``sqlite:///path`` backend (see the module docstring for options and guarantees)."""

    # notify: an enqueue by this instance wakes its waiters at once, and any commit to the file
    # by another connection (another instance, another process) changes PRAGMA data_version,
    # which waiters read every poll_ms; so new work wakes a waiter within poll_ms without any
    # registry shared between instances.
    capabilities = Capabilities(notify=True, transactional=True)  # see enqueue_in

    def __init__(self, url: str, **options: Any) -> None:
        self._url = url
        self.path, self._opts = _parse_url(url, options)
        self._poll_s: float = self._opts["poll_ms"] / 1000
        self._writer: _Runner | None = None
        self._reader: _Runner | None = None
        # Waiters of this instance; a lock because the app's sync bridge and a worker may call
        # one instance from two event loops.
        self._lock = threading.Lock()
        self._work_waiters: list[_Waiter] = []
        self._done_waiters: dict[str, list[_Waiter]] = {}

    @property
    def url(self) -> str:
        return self._url

    @property
    def synchronous(self) -> str:
        """The ``PRAGMA synchronous`` level in use: ``FULL`` or ``NORMAL``."""
        return str(self._opts["synchronous"])

    async def open(self) -> None:
        if self._writer is not None:
            return
        tag = os.path.basename(self.path)
        writer = _Runner(
            f"offload-sqlite-writer:{tag}",
            partial(_connect, self.path, self._opts, write=True),
            True,
        )
        reader = _Runner(
            f"offload-sqlite-reader:{tag}",
            partial(_connect, self.path, self._opts, write=False),
            False,
        )
        self._writer, self._reader = writer, reader
        try:
            await writer.start()
            await reader.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        runners = (self._reader, self._writer)
        self._writer = self._reader = None
        for runner in runners:
            if runner is not None:
                await runner.stop()

    async def _write(self, call: _Call) -> Any:
        if self._writer is None:
            raise BackendUnavailable("the SQLite backend is not open")
        return await self._writer.submit(call)

    async def _read(self, call: _Call) -> Any:
        if self._reader is None:
            raise BackendUnavailable("the SQLite backend is not open")
        return await self._reader.submit(call)

    def _wake_work(self) -> None:
        with self._lock:
            waiters, self._work_waiters = self._work_waiters, []
        _wake(waiters)

    def _wake_done(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            waiters = [w for j in job_ids for w in self._done_waiters.pop(j, [])]
        _wake(waiters)

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, limits: Mapping[str, int] | None = None
    ) -> list[JobRecord]:
        if not jobs:
            return []
        records: list[JobRecord] = await self._write(
            partial(_enqueue_tx, jobs=list(jobs), limits=dict(limits or {}))
        )
        self._wake_work()
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
        records = _enqueue_on_callers(conn, self.path, jobs, dict(limits or {}))
        self._wake_work()
        return records

    # -- consuming -------------------------------------------------------------------------

    async def claim(self, req: ClaimRequest) -> list[JobRecord]:
        if req.limit <= 0 or not req.queues:
            return []
        records: list[JobRecord] = await self._write(partial(_claim_tx, req=req))
        return records

    async def heartbeat(self, leases: Sequence[Lease], lease_s: float) -> set[str]:
        if not leases:
            return set()
        held: set[str] = await self._write(partial(_heartbeat_tx, leases=leases, lease_s=lease_s))
        return held

    async def complete(self, results: Sequence[tuple[Lease, Outcome]]) -> None:
        if not results:
            return
        await self._write(partial(_complete_tx, results=list(results)))
        if any(isinstance(o, RetryAt | Snoozed) for _, o in results):
            self._wake_work()
        if self._done_waiters:
            self._wake_done(
                [lease.job_id for lease, o in results if not isinstance(o, RetryAt | Snoozed)]
            )

    async def recover(self) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            params = {"now": time.time(), "error": LEASE_EXPIRED_ERROR}
            return int(conn.execute(_Q["recover"], params).rowcount)

        n: int = await self._write(tx)
        if n:
            self._wake_work()
            with self._lock:
                ids = list(self._done_waiters)
            self._wake_done(ids)  # some may have gone dead; a spurious wake only re-reads
        return n

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> None:
        if not queues:
            await asyncio.sleep(max(timeout_s, 0.0))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        waiter: _Waiter = (loop, loop.create_future())
        with self._lock:
            self._work_waiters.append(waiter)
        version: int | None = None
        next_due: float | None = None
        try:
            while not waiter[1].done():
                seen, due = await self._read(partial(_probe_tx, queues=queues, seen=version))
                if seen != version:
                    version, next_due = seen, due
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
                # other processes' completions are only seen by reading again
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
            row = conn.execute(_Q["get"], (job_id,)).fetchone()
            return _decode_or_warn(row) if row is not None else None

        rec: JobRecord | None = await self._read(tx)
        return rec

    async def list_jobs(self, flt: JobFilter) -> JobPage:
        cursor = _decode_cursor(flt.cursor) if flt.cursor else None
        page: JobPage = await self._read(partial(_list_tx, flt=flt, cursor=cursor))
        return page

    async def counts(self) -> dict[str, dict[JobState, int]]:
        out: dict[str, dict[JobState, int]] = await self._read(_counts_tx)
        return out

    async def cancel(self, job_id: str) -> JobRecord | None:
        rec: JobRecord | None = await self._write(partial(_cancel_tx, job_id=job_id))
        self._wake_done([job_id])
        return rec

    async def retry(self, job_id: str) -> JobRecord | None:
        rec: JobRecord | None = await self._write(partial(_retry_tx, job_id=job_id))
        self._wake_work()
        return rec

    async def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0

        def tx(conn: sqlite3.Connection) -> int:
            return int(conn.executemany(_Q["delete"], [(j,) for j in job_ids]).rowcount)

        n: int = await self._write(tx)
        return n

    async def purge(
        self, states: Sequence[JobState], *, older_than_s: float = 0.0, queue: str | None = None
    ) -> int:
        check_purge_states(states)
        if not states:
            return 0
        params: dict[str, Any] = {"queue": queue}
        for i, state in enumerate(states):
            params[f"s{i}"] = state.value
        sql = _Q["purge"].replace("{states}", ", ".join(f":s{i}" for i in range(len(states))))

        def tx(conn: sqlite3.Connection) -> int:
            params["cutoff"] = time.time() - older_than_s
            return int(conn.execute(sql, params).rowcount)

        n: int = await self._write(tx)
        return n

    async def run_maintenance(self) -> int:
        """Delete finished jobs older than ``?retention=`` seconds (kept forever when unset).

        Idempotent and cheap when there is nothing to do, so several processes sharing the
        file may all call it; the writer lock serialises them.
        """
        await self._write(lambda conn: conn.execute(_Q["forget_expired_workers"], (time.time(),)))
        retention = self._opts["retention"]
        if retention is None:
            return 0
        final = [JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED]
        return await self.purge(final, older_than_s=float(retention))

    async def set_paused(self, queue: str, paused: bool) -> None:
        name = "pause" if paused else "resume"
        await self._write(lambda conn: conn.execute(_Q[name], (queue,)))
        if not paused:
            self._wake_work()

    async def paused_queues(self) -> set[str]:
        rows: list[tuple[str]] = await self._read(
            lambda conn: conn.execute(_Q["paused_queues"]).fetchall()
        )
        return {str(q) for (q,) in rows}

    async def report_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        encoded = msgspec.json.encode(info)

        def tx(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(_Q["forget_expired_workers"], (now,))
            conn.execute(_Q["report_worker"], (info.id, encoded, now, now + ttl_s))

        await self._write(tx)

    async def remove_worker(self, worker_id: str) -> None:
        await self._write(lambda conn: conn.execute(_Q["remove_worker"], (worker_id,)))

    async def workers(self) -> list[WorkerInfo]:
        out: list[WorkerInfo] = await self._read(_workers_tx)
        return out
