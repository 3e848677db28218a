"""A sync enqueue written by the calling thread itself, when the commit is cheap.

``enqueue_now`` (a Django or Flask view's ``task.enqueue()``) hands its transaction to the
writer thread and waits: two thread wake-ups per call. At ``synchronous=full`` the commit's
fsync dwarfs them, and the writer's group commit shares one fsync among concurrent callers.
At ``synchronous=normal`` a commit costs no fsync, and the hand-over is most of the call
(167 µs per one-job enqueue against 124 µs written on the caller's thread, here). So at
``normal`` (or ``off``) the caller writes itself, on a connection of its thread's own, when
the write lock is free at that instant; when it is not (the writer, another process or
another thread is writing) it hands the transaction to the writer as before, which waits for
the lock. Nothing waits twice, and the transaction is the very same ``enqueue_tx``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from offload.backends.sqlite.connection import busy, translate
from offload.backends.sqlite.transactions import enqueue_tx
from offload.errors import BackendUnavailable
from offload.job import JobRecord, NewJob

# Connections held at once. A server that starts a thread per request (Django's runserver)
# would otherwise open one per request: those of threads that have ended are closed as new
# ones open, and past this many live ones a caller hands its enqueue to the writer instead.
MAX_CONNECTIONS = 16


class DirectWriters:
    """A write connection per calling thread, made on its first enqueue; those of ended
    threads closed as new ones open, and all by :meth:`close`."""

    def __init__(self, path: str, opts: Mapping[str, Any]) -> None:
        self._path = path
        self._opts = opts
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._closed = False

    def enqueue(self, jobs: Sequence[NewJob], limits: Mapping[str, int]) -> list[JobRecord] | None:
        """``enqueue_tx`` committed on this thread's connection; None, having written
        nothing, when the write lock is taken at this instant or this thread has no
        connection (the caller then hands the transaction to the writer thread)."""
        conn = self._connection()
        if conn is None:
            return None
        try:
            conn.execute("BEGIN IMMEDIATE")  # busy_timeout 0: busy at once, never a wait
        except sqlite3.Error as exc:
            if busy(exc):
                return None
            raise translate(exc) from None
        try:
            records = enqueue_tx(conn, jobs, limits)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(exc, sqlite3.Error):
                raise translate(exc) from None
            raise
        return records

    def _connection(self) -> sqlite3.Connection | None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise BackendUnavailable("the SQLite backend is closed")
            ended = [t for t in self._conns if not t.is_alive()]
            for thread in ended:  # nobody uses these any more
                _close(self._conns.pop(thread))
            if len(self._conns) >= MAX_CONNECTIONS:
                return None
        try:
            # The writer made the file (WAL, schema); this one only writes rows. Timeout 0:
            # a taken lock is an answer at once (see enqueue), never a wait.
            conn = sqlite3.connect(
                self._path, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise translate(exc) from None
        try:
            conn.execute(f"PRAGMA synchronous = {self._opts['synchronous']}")
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc) from None
        with self._lock:
            if self._closed:
                conn.close()
                raise BackendUnavailable("the SQLite backend is closed")
            self._conns[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close every thread's connection (the backend is closing: a thread still writing
        gets BackendUnavailable)."""
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            _close(conn)


def _close(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass
