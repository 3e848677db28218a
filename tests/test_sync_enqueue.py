"""The app's sync enqueue on the caller's own thread (``SyncEnqueue``), on every engine.

The backend's async ``enqueue`` is replaced by one that fails, so these tests fail if a sync
``enqueue()`` goes through the event loop instead; the hooks still run around it, a full queue
stores nothing, and the job is readable by another app (its own connections) at once.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import offload
from offload.backends.sqlite import direct
from offload.backends.sqlite.direct import MAX_CONNECTIONS
from offload.backends.sqlite.transactions import enqueue_tx
from offload.job import JobState, NewJob
from tests.services import backend_url

KINDS = ["memory", "sqlite", "sqlite-normal", "redis", "postgres", "rabbitmq"]


@pytest.fixture(params=KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
        return
    if request.param == "sqlite-normal":  # the caller's thread writes itself (direct.py)
        yield f"sqlite:///{tmp_path / 'normal.db'}?synchronous=normal"
        return
    with backend_url(request.param, tmp_path) as u:
        yield u


class Recorder(offload.Hook):
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def before_enqueue(self, jobs: Sequence[NewJob]) -> None:
        self.calls.append(("before", [j.id for j in jobs]))

    def after_enqueue(self, jobs: Sequence[offload.Job]) -> None:
        self.calls.append(("after", [j.id for j in jobs]))


def no_async_path(app: offload.App) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a sync enqueue went through the event loop")

    app.backend.enqueue = refuse  # type: ignore[method-assign]


def test_sync_enqueue_stays_on_the_callers_thread(url: str) -> None:
    app = offload.App(url, queue_limits={"small": 1})
    hooks = app.add_hook(Recorder())
    assert isinstance(hooks, Recorder)

    @app.task(name="t")
    def t(i: int) -> None: ...

    first = t.enqueue(0)  # opens the backend (on the bridge), then stores on this thread
    no_async_path(app)
    job = t.enqueue(1)
    both = app.enqueue_many([t.prepare(2), t.prepare(3)])
    ids = [first.id, job.id, *(j.id for j in both)]
    assert hooks.calls == [
        ("before", [first.id]),
        ("after", [first.id]),
        ("before", [job.id]),
        ("after", [job.id]),
        ("before", ids[2:]),
        ("after", ids[2:]),
    ]
    assert job.record.state is JobState.QUEUED
    if not url.startswith("memory"):  # another process's view: its own connections
        other = offload.App(url)
        try:
            assert [other.get_job(i).record.args for i in ids] == [
                b'{"i":%d}' % n for n in range(4)
            ]
        finally:
            other.close_sync()

    hooks.calls.clear()
    small = t.options(queue="small")
    small.enqueue(4)
    with pytest.raises(offload.QueueFull):
        small.enqueue(5)
    assert [c[0] for c in hooks.calls] == ["before", "after", "before"]  # no "after": not stored
    counts = app.run_sync(lambda b: b.counts())
    assert sum(counts.get("small", {}).values()) == 1
    app.close_sync()


# -- SQLite at synchronous=normal: the calling thread writes itself when the lock is free ------


def sqlite_app(path: Path, synchronous: str) -> tuple[offload.App, Any, list[int]]:
    """An app on ``path``, its task ``t`` (opened by a first enqueue), and the count of
    transactions handed to the writer thread from then on."""
    app = offload.App(f"sqlite:///{path}?synchronous={synchronous}")

    @app.task(name="t")
    def t(i: int) -> None: ...

    t.enqueue(0)
    return app, t, writer_calls(app)


def writer_calls(app: offload.App) -> list[int]:
    """Count the transactions handed to the writer thread from now on."""
    writer = app.backend._writer  # type: ignore[attr-defined]
    handed: list[int] = []
    submit = writer.submit_sync

    def counted(call: Any) -> Any:
        handed.append(1)
        return submit(call)

    writer.submit_sync = counted
    return handed


def db_fds(path: Path) -> int:
    """This process's open file descriptors on the database file itself."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return n


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_sqlite_who_writes_a_sync_enqueue(tmp_path: Path, synchronous: str) -> None:
    """At normal the calling threads write on connections of their own (no hand-over to the
    writer thread); at full the writer does, for its group commit. The threads' connections
    are closed with the backend."""
    path = tmp_path / "who.db"
    app, t, handed = sqlite_app(path, synchronous)
    for i in range(1, 5):  # one after another: threads that collide hand over (test below)
        thread = threading.Thread(target=t.enqueue, args=(i,))
        thread.start()
        thread.join()
    t.enqueue(5)
    counts = app.run_sync(lambda b: b.counts())
    assert counts["default"][JobState.QUEUED] == 6
    assert len(handed) == (0 if synchronous == "normal" else 5)
    app.close_sync()
    assert db_fds(path) == 0


def test_sqlite_a_taken_lock_hands_the_enqueue_to_the_writer(tmp_path: Path) -> None:
    """With the write lock held elsewhere, the caller does not wait on its own connection:
    the writer thread takes the transaction and waits for the lock, as at full."""
    path = tmp_path / "locked.db"
    app, t, handed = sqlite_app(path, "normal")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    done = threading.Event()

    def enqueue_one() -> None:
        t.enqueue(1)
        done.set()

    thread = threading.Thread(target=enqueue_one)
    thread.start()
    try:
        assert not done.wait(0.3)  # waiting (in the writer) for the lock
        assert handed == [1]
    finally:
        other.execute("COMMIT")
        other.close()
    thread.join(10)
    assert done.is_set()
    t.enqueue(2)  # the lock is free again: this thread writes itself
    assert handed == [1]
    assert app.run_sync(lambda b: b.counts())["default"][JobState.QUEUED] == 3
    app.close_sync()


def test_sqlite_threads_that_end_do_not_keep_connections(tmp_path: Path) -> None:
    """A server that starts a thread per request: the connections of ended threads are closed
    as new ones open, and never more than MAX_CONNECTIONS live ones are held (past that, a
    thread hands its enqueue to the writer)."""
    path = tmp_path / "many.db"
    app, t, handed = sqlite_app(path, "normal")
    for i in range(40):  # one thread per "request", each gone before the next starts
        thread = threading.Thread(target=t.enqueue, args=(i,))
        thread.start()
        thread.join()
    assert db_fds(path) <= 4  # the writer, the reader, the main thread, the last thread
    assert handed == []
    gate, started = threading.Event(), threading.Semaphore(0)

    def request(i: int) -> None:  # live threads, each holding its connection
        t.enqueue(i)
        started.release()
        gate.wait(10)

    live = [threading.Thread(target=request, args=(i,)) for i in range(MAX_CONNECTIONS + 4)]
    for thread in live:  # one after another, so that none collides on the lock
        thread.start()
        assert started.acquire(timeout=10)
    gate.set()
    for thread in live:
        thread.join()
    assert len(handed) == 5  # past the cap (the main thread holds one too), to the writer
    assert app.run_sync(lambda b: b.counts())["default"][JobState.QUEUED] == 61
    app.close_sync()
    assert db_fds(path) == 0


def test_sqlite_threads_threading_did_not_start_release_theirs_too(tmp_path: Path) -> None:
    """A server's own threads (uWSGI, mod_wsgi start them outside ``threading``: their
    is_alive() never turns false): when one ends, its connection is closed as others open."""
    path = tmp_path / "foreign.db"
    app, t, handed = sqlite_app(path, "normal")
    for i in range(40):  # one foreign thread per "request", each done before the next starts
        done = threading.Event()

        def request(i: int = i, done: threading.Event = done) -> None:
            try:
                t.enqueue(i)
            finally:
                done.set()

        _thread.start_new_thread(request, ())
        assert done.wait(10)
    # The writer, the reader, the main thread, the last thread, and at most two more whose
    # exit (after done.set()) had not finished when the next one opened its connection.
    assert db_fds(path) <= 6
    assert handed == []
    assert app.run_sync(lambda b: b.counts())["default"][JobState.QUEUED] == 41
    app.close_sync()
    assert db_fds(path) == 0


def test_sqlite_close_waits_for_a_direct_write_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the backend while a thread is inside its own transaction waits for it to
    commit, and never closes the connection under it (which crashed the process); the job is
    stored, and the thread's next enqueue gets BackendUnavailable."""
    path = tmp_path / "closing.db"
    app, t, _ = sqlite_app(path, "normal")
    inside, go = threading.Event(), threading.Event()
    real = enqueue_tx

    def paused(conn: sqlite3.Connection, jobs: Any, limits: Any) -> Any:
        out = real(conn, jobs, limits)  # rows written, transaction open
        inside.set()
        assert go.wait(10)
        return out

    monkeypatch.setattr(direct, "enqueue_tx", paused)
    got: dict[str, Any] = {}

    def writer() -> None:
        got["job"] = t.enqueue(1)
        with contextlib.suppress(offload.BackendUnavailable):
            t.enqueue(2)
            got["late"] = True

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(10)
    closing = threading.Thread(target=app.close_sync)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive()  # waiting for the transaction in flight
    go.set()
    closing.join(10)
    thread.join(10)
    assert not closing.is_alive() and not thread.is_alive()
    assert "late" not in got
    other = offload.App(f"sqlite:///{path}")
    try:
        assert other.get_job(got["job"].id).record.state is JobState.QUEUED
    finally:
        other.close_sync()


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_sqlite_a_forked_child_does_not_write_through_the_parents_connection(
    tmp_path: Path, synchronous: str
) -> None:
    """SQLite's locks are not inherited across fork(): a child refuses with
    BackendUnavailable rather than write on the parent's connection (at normal) or wait for
    the parent's writer thread, which the child does not have (at full); the parent goes on."""
    path = tmp_path / "fork.db"
    app, t, _ = sqlite_app(path, synchronous)
    t.enqueue(1)  # this thread now has its own connection
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if refused as it should be
        try:
            t.enqueue(2)
        except offload.BackendUnavailable:
            os._exit(0)
        except BaseException:
            os._exit(2)
        os._exit(1)
    deadline = time.monotonic() + 10
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # a child process: no event of ours to wait on
    if waited[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on its enqueue")
    assert os.waitstatus_to_exitcode(waited[1]) == 0
    t.enqueue(3)
    assert app.run_sync(lambda b: b.counts())["default"][JobState.QUEUED] == 3
    app.close_sync()
