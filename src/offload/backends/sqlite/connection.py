"""The SQLite backend's threads: a runner owning one connection (the writer's group commit, the
reader's plain calls), the translation of engine errors, and connection set-up (WAL, schema)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from queue import Empty, SimpleQueue
from typing import Any

from offload.backends.sqlite.queries import SCHEMA_VERSION, Q
from offload.errors import BackendUnavailable, ConfigurationError, StorageFull, describe

Call = Callable[[sqlite3.Connection], Any]
# An async caller waits on an asyncio future (settled on its loop); a sync caller on a
# concurrent one (settled by this thread directly). A None call asks the thread to stop.
_Future = asyncio.Future[Any] | concurrent.futures.Future[Any]
_Request = tuple[Call | None, _Future]
_Settled = tuple[_Future, Any, BaseException | None]

_MAX_BATCH = 512  # requests per group commit: bounds one transaction's latency
# Waiting for another process's write lock: SQLite's own busy handler sleeps 1, 2, 5, 10, 15,
# 20 ... ms between tries, so a lock held 3 ms costs 8 ms and one held 8 ms costs 18 ms; the
# tail of enqueue-to-start latency across processes was made of these sleeps. The writer
# waits itself instead, in steps from 0.1 ms up to this one.
_BEGIN_MAX_STEP_S = 0.001


class NoFlush:
    """A write whose commit need not wait for the disk: a claim, a heartbeat. A batch of only
    these commits at ``synchronous=NORMAL`` (no fsync), as PostgreSQL's claims commit with
    ``synchronous_commit`` off. Lost in a power cut, a claim only gives its job back to the
    queue, as a lost lease does (at-least-once); the next flushed commit makes it durable
    with the rest of the WAL, which is written in order. The wait sat on the path from enqueue
    to start: each claim waited for one fsync before its job could run."""

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call

    def __call__(self, conn: sqlite3.Connection) -> Any:
        return self.call(conn)


def same_process(pid: int) -> None:
    """Raise BackendUnavailable in a process other than ``pid``: a child forked after the
    backend opened has none of its threads, and SQLite's locks do not cross a fork."""
    if os.getpid() != pid:
        raise BackendUnavailable(
            "this SQLite backend was opened in another process (before a fork): open the "
            "app again in this one"
        )


def settle(items: Sequence[_Settled]) -> None:
    for fut, value, exc in items:
        if fut.done():  # the caller was cancelled
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


class ConnectionThread:
    """One thread owning one connection. Requests run in submission order; on the writer,
    all requests waiting together run in one transaction."""

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        write: bool,
        busy_timeout_s: float = 5.0,
        *,
        relax: bool = False,
    ):
        """``relax``: commit a batch of only :class:`NoFlush` writes at ``NORMAL`` (the
        connection is at ``FULL``)."""
        self._connect = connect
        self._write = write
        self._busy_timeout_s = busy_timeout_s
        self._relax = relax
        self.relaxed_commits = 0  # batches committed without an fsync (tests read it)
        self._requests: SimpleQueue[_Request] = SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._stopping = False
        self._pid = os.getpid()

    async def start(self) -> None:
        """Start the thread and connect; raises what connecting raised (thread then gone)."""
        ready = self.submit(lambda conn: None)
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread.join()
            raise

    def _check_open(self) -> None:
        if self._stopping:
            raise BackendUnavailable("the SQLite backend is closed")
        same_process(self._pid)  # a forked child: this thread was not copied into it

    def submit(self, call: Call) -> asyncio.Future[Any]:
        self._check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests.put((call, fut))
        return fut

    def submit_sync(self, call: Call) -> concurrent.futures.Future[Any]:
        """``submit`` for a caller on another thread, with no event loop: it waits on the
        returned future, which this thread settles after the group commit."""
        self._check_open()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
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
            self._fail_pending(translate(exc))
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
                    if self._write:
                        self._deliver(self._relaxed_or_not(conn, batch))
                    else:
                        self._deliver(self._each(conn, batch))
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
                out.append((fut, None, translate(exc)))
        return out

    def _relaxed_or_not(
        self, conn: sqlite3.Connection, batch: Sequence[_Request]
    ) -> list[_Settled]:
        if not (self._relax and all(isinstance(call, NoFlush) for call, _ in batch)):
            return self._transaction(conn, batch, self._busy_timeout_s)
        try:
            conn.execute("PRAGMA synchronous = NORMAL")  # outside a transaction: read at commit
        except sqlite3.Error:
            return self._transaction(conn, batch, self._busy_timeout_s)  # flushed, as others
        done = self._transaction(conn, batch, self._busy_timeout_s)
        try:
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error:
            # Never go on writing unflushed: answer this batch, then end the thread (every
            # later write gets BackendUnavailable).
            self._deliver(done)
            raise
        self.relaxed_commits += 1
        return done

    @staticmethod
    def _transaction(
        conn: sqlite3.Connection, batch: Sequence[_Request], busy_timeout_s: float
    ) -> list[_Settled]:
        out: list[_Settled] = []
        nested = len(batch) > 1
        try:
            begin_immediate(conn, busy_timeout_s)
            for call, fut in batch:
                if nested:
                    conn.execute("SAVEPOINT request")
                try:
                    out.append((fut, call(conn) if call else None, None))
                except Exception as exc:
                    if isinstance(exc, sqlite3.Error) and not conn.in_transaction:
                        raise  # the engine rolled the whole transaction back
                    conn.execute("ROLLBACK TO request" if nested else "ROLLBACK")
                    out.append((fut, None, translate(exc)))
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
            err = translate(exc)
            return [(fut, None, err) for _, fut in batch]
        return out

    @staticmethod
    def _deliver(items: Sequence[_Settled]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}
        for item in items:
            fut = item[0]
            if isinstance(fut, concurrent.futures.Future):
                settle([item])  # thread-safe by itself; its caller waits on no loop
            else:
                by_loop.setdefault(fut.get_loop(), []).append(item)
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(settle, group)
            except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
                pass


def begin_immediate(conn: sqlite3.Connection, busy_timeout_s: float) -> None:
    """BEGIN IMMEDIATE, waiting for another process's write lock in short steps.

    The writer's connection has a busy timeout of 0 (see ``connect``): in WAL mode only taking
    the write lock can be busy, and that wait is done here, finer than SQLite's own.
    """
    deadline = time.monotonic() + busy_timeout_s
    step = 0.0001
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(step)
        step = min(step * 2, _BEGIN_MAX_STEP_S)


def busy(exc: sqlite3.Error) -> bool:
    """The error is SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def translate(exc: BaseException) -> BaseException:
    if not isinstance(exc, sqlite3.Error):
        return exc
    if _disk_full(exc):
        return StorageFull(
            "the disk holding the SQLite database is full (SQLITE_FULL: database or disk is "
            "full); nothing was written, and writes resume once space is freed"
        )
    if "locked" in str(exc) or "busy" in str(exc):
        return BackendUnavailable(
            f"SQLite database is locked (another process held it past busy_timeout_ms): {exc}"
        )
    return BackendUnavailable(f"SQLite error: {describe(exc)}")


def _disk_full(exc: sqlite3.Error) -> bool:
    # SQLite reports ENOSPC on any of its files (database, WAL, journal) as SQLITE_FULL; the
    # primary code is the low byte of an extended one.
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == sqlite3.SQLITE_FULL
    return "database or disk is full" in str(exc)


def connect(path: str, opts: Mapping[str, Any], *, write: bool) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, timeout=opts["busy_timeout_ms"] / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackendUnavailable(f"cannot open SQLite database {path!r}: {exc}") from None
    try:
        if not write:
            conn.execute("PRAGMA query_only = ON")
            return conn
        # Only takes effect on a file without tables (a new one); an older file is converted
        # by _incremental_vacuum below. Freed pages then go back to the file system in steps
        # (offload.backends.sqlite.retention) instead of the file keeping its largest size.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        _use_wal(conn, path, opts["busy_timeout_ms"] / 1000)
        conn.execute(f"PRAGMA synchronous = {opts['synchronous']}")
        conn.execute("PRAGMA cache_size = -16000")  # 16 MB: the hot indexes stay in memory
        _migrate(conn, path)
        _incremental_vacuum(conn)
        conn.execute("PRAGMA busy_timeout = 0")  # begin_immediate waits for the lock itself
        return conn
    except sqlite3.Error as exc:
        conn.close()
        if _disk_full(exc):
            raise StorageFull(f"cannot open SQLite database {path!r}: its disk is full") from None
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
            # The schema is the current one, every statement IF NOT EXISTS; an older file then
            # takes each upgrade past its version (a fresh one too: they are no-ops for it).
            _run_script(conn, Q["schema"])
            for step in range(version + 1, SCHEMA_VERSION + 1):
                if f"upgrade_{step}" in Q:
                    _run_script(conn, Q[f"upgrade_{step}"])
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_AUTO_VACUUM_NONE = 0


def _incremental_vacuum(conn: sqlite3.Connection) -> None:
    """Convert a file made before schema version 4 to ``auto_vacuum=INCREMENTAL``, once.

    That takes a ``VACUUM``: the whole file is rewritten (3.4 s for a 210 MB file here,
    needing that much free disk for the copy), holding the write lock meanwhile. A file that
    chose FULL auto-vacuum itself is left alone. Other processes opening the file meanwhile
    wait for the write lock up to their ``busy_timeout_ms`` (5 s by default): let one process
    open a big file first (``offload jobs list`` will do) before starting many on it.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == _AUTO_VACUUM_NONE:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it would COMMIT the migration's transaction first.
    lines = [ln for ln in script.splitlines() if not ln.lstrip().startswith("--")]
    for statement in "\n".join(lines).split(";"):
        if statement.strip():
            try:
                conn.execute(statement)
            except sqlite3.OperationalError as exc:
                # ADD COLUMN has no IF NOT EXISTS: a column already there is the upgrade done.
                if "duplicate column name" not in str(exc):
                    raise
