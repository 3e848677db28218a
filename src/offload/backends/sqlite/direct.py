"""A sync enqueue written by the calling thread itself, when the commit is cheap.

``enqueue_now`` (a Django or Flask view's ``task.enqueue()``) hands its transaction to the
writer thread and waits: two thread wake-ups per call. At ``synchronous=full`` the commit's
fsync dwarfs them, and the writer's group commit shares one fsync among concurrent callers.
At ``synchronous=normal`` a commit costs no fsync, and the hand-over is most of the call
(167 µs per one-job enqueue against 124 µs written on the caller's thread, here). So at
``normal`` the caller writes itself, on a connection of its thread's own, when the write lock
is free at that instant; when it is not (the writer, another process or another thread is
writing) it hands the transaction to the writer as before, which waits for the lock. Nothing
waits twice, and the transaction is the very same ``enqueue_tx``.

Closing: each connection has a lock, held from BEGIN to COMMIT, which ``close`` takes before
closing it; so closing the backend waits for a transaction in flight (a few hundred µs) and
never pulls a connection from under it (CPython's sqlite3 would then crash the process).
A connection is never used by a process other than the one that opened it: SQLite's locks
are not inherited across ``fork()``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from offload.backends.sqlite.connection import busy, same_process, translate
from offload.backends.sqlite.transactions import enqueue_tx
from offload.errors import BackendUnavailable
from offload.job import JobRecord, NewJob

# Connections held at once. A server that starts a thread per request (Django's runserver)
# would otherwise open one per request: those of threads that have ended are closed as new
# ones open, and past this many live ones a caller hands its enqueue to the writer instead.
MAX_CONNECTIONS = 16


class _Alive:
    """Held only by its thread's ``threading.local``, so freed when that thread ends: also a
    thread that ``threading`` did not start (uWSGI's, mod_wsgi's), whose ``is_alive()``
    stays true for good."""

    __slots__ = ("__weakref__",)


@dataclass
class _Slot:
    """A thread's connection, and the lock that keeps ``close`` from pulling it mid-write."""

    conn: sqlite3.Connection
    alive: weakref.ref[_Alive]  # dead once the thread has ended
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def close(self) -> None:
        with self.lock:
            self.closed = True
            try:
                self.conn.close()
            except sqlite3.Error:
                pass


class DirectWriters:
    """A write connection per calling thread, made on its first enqueue; those of ended
    threads closed as new ones open, and all by :meth:`close`."""

    def __init__(self, path: str, opts: Mapping[str, Any]) -> None:
        self._path = path
        self._opts = opts
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._closed = False

    def enqueue(self, jobs: Sequence[NewJob], limits: Mapping[str, int]) -> list[JobRecord] | None:
        """``enqueue_tx`` committed on this thread's connection; None, having written
        nothing, when the write lock is taken at this instant or this thread has no
        connection (the caller then hands the transaction to the writer thread)."""
        slot = self._slot()
        if slot is None:
            return None
        with slot.lock:
            if slot.closed:
                raise BackendUnavailable("the SQLite backend is closed")
            conn = slot.conn
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
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc) from None
                raise
            return records

    def _slot(self) -> _Slot | None:
        same_process(self._pid)
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is not None:
            return slot
        with self._lock:
            if self._closed:
                raise BackendUnavailable("the SQLite backend is closed")
            kept: list[_Slot] = []
            ended: list[_Slot] = []
            for slot in self._slots:  # one look per slot: a thread may end meanwhile
                (ended if slot.alive() is None else kept).append(slot)
            self._slots = kept
            for slot in ended:
                slot.close()  # nobody uses these any more
            if len(self._slots) >= MAX_CONNECTIONS:
                return None
        try:
            # The writer made the file (WAL, schema); this one only writes rows. Timeout 0:
            # a taken lock is an answer at once (see enqueue), never a wait.
            conn = sqlite3.connect(
                self._path, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise translate(exc) from None
        alive = _Alive()
        slot = _Slot(conn, weakref.ref(alive))
        try:
            conn.execute(f"PRAGMA synchronous = {self._opts['synchronous']}")
        except sqlite3.Error as exc:
            slot.close()
            raise translate(exc) from None
        with self._lock:
            if self._closed:
                slot.close()
                raise BackendUnavailable("the SQLite backend is closed")
            self._slots.append(slot)
        self._local.slot, self._local.alive = slot, alive
        return slot

    def close(self) -> None:
        """Close every thread's connection, each once its transaction in flight (if any) has
        ended; a thread that enqueues afterwards gets BackendUnavailable. In a forked child
        the parent's connections are left alone (the parent closes them)."""
        with self._lock:
            self._closed = True
            slots, self._slots = self._slots, []
        if os.getpid() != self._pid:
            return
        for slot in slots:
            slot.close()
