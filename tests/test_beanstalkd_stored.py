"""``beanstalk://?store=`` on the local beanstalkd, with a SQLite file (and PostgreSQL) as its
state store. Each test uses its own tube prefix and deletes its tubes' jobs afterwards."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

import offload
from offload.backends import from_url
from offload.backends.base import Backend
from offload.backends.beanstalkd import StoredBeanstalkBackend
from offload.backends.beanstalkd.options import tube_of
from offload.backends.beanstalkd.protocol import Connection
from offload.errors import BackendUnavailable
from offload.job import JobState
from offload.outcome import Succeeded
from offload.testing import (
    EXPIRY_WAIT_S,
    QUEUE,
    SHORT_LEASE_S,
    BackendConformance,
    MakeBackend,
    claim_ids,
    claim_request,
    lease_of,
    must_get,
    new_job,
)
from offload.testing.machine import backend_machine
from tests.procs import kill_all, ledger_lines, start_worker, stop, wait_for
from tests.services import (
    BEANSTALKD_HOST,
    BEANSTALKD_PORT,
    BEANSTALKD_URL,
    backend_url,
    port_open,
    require_beanstalkd,
    unavailable,
    unique_name,
)

Make = Callable[[], Awaitable[StoredBeanstalkBackend]]


def beanstalk_url(prefix: str, store: str) -> str:
    return f"{BEANSTALKD_URL}?prefix={prefix}&store={quote(store, safe='')}"


@pytest.fixture
async def make_stalk(tmp_path: Path) -> AsyncIterator[Make]:
    require_beanstalkd()
    async for make in _maker(f"sqlite:///{tmp_path / 'state.db'}"):
        yield make


@pytest.fixture
async def make_stalk_pg(tmp_path: Path) -> AsyncIterator[Make]:
    require_beanstalkd()
    with backend_url("postgres", tmp_path) as store:
        async for make in _maker(store):
            yield make


async def _maker(store: str) -> AsyncIterator[Make]:
    url = beanstalk_url(unique_name("offload_t"), store)
    opened: list[StoredBeanstalkBackend] = []

    async def make() -> StoredBeanstalkBackend:
        backend = from_url(url)
        assert isinstance(backend, StoredBeanstalkBackend)
        await backend.open()
        opened.append(backend)
        return backend

    yield make
    tubes = set().union(*(b.used_tubes() for b in opened)) if opened else set()
    for backend in opened:
        await backend.close()
    if opened:
        await opened[0].open()
        await opened[0].delete_tubes(sorted(tubes))
        await opened[0].close()


class TestBeanstalkSQLiteConformance(BackendConformance):
    @pytest.fixture
    async def make_backend(self, make_stalk: Make) -> MakeBackend:
        async def make() -> Backend:
            return await make_stalk()

        return make


class TestBeanstalkPostgresConformance(BackendConformance):
    @pytest.fixture
    async def make_backend(self, make_stalk_pg: Make) -> MakeBackend:
        async def make() -> Backend:
            return await make_stalk_pg()

        return make


N_JOBS = 1000
CONCURRENCY = 20


def test_kill9_mid_run_loses_nothing(tmp_path: Path) -> None:
    """tests/test_kill9.py's scenario on beanstalk://?store=: kill -9 a worker in the middle of
    1,000 jobs, start another; every job succeeds, re-runs only of what the killed one held."""
    require_beanstalkd()
    prefix = unique_name("offload_k")
    url = beanstalk_url(prefix, f"sqlite:///{tmp_path / 'state.db'}")
    ledger = tmp_path / "ledger.txt"
    app = offload.App(url)

    @app.task(name="record", max_attempts=5)
    def record(i: int, ledger: str, sleep_s: float = 0.0) -> int:
        return i

    app.enqueue_many([record.prepare(i, str(ledger), 0.002) for i in range(N_JOBS)])
    flags = ["--concurrency", str(CONCURRENCY), "--lease", "2", "--heartbeat", "0.5"]
    first = start_worker(url, *flags)
    second = None
    try:
        wait_for(lambda: len(ledger_lines(ledger)) >= N_JOBS // 3, 60, "a third of the jobs")
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = start_worker(url, *flags)

        def all_done() -> bool:
            counts = app.run_sync(lambda b: b.counts())
            return sum(counts.get("default", {}).get(s, 0) for s in JobState if s.final) >= N_JOBS

        wait_for(all_done, 90, "every job to finish after the kill")
        assert stop(second) == 0
    finally:
        kill_all([p for p in (first, second) if p is not None])
    counts = app.run_sync(lambda b: b.counts())["default"]
    left = app.run_sync(lambda b: _jobs_in(b, "ready", "reserved", "delayed", "buried"))
    app.close_sync()
    starts = collections.Counter(line.split()[0] for line in ledger_lines(ledger))
    lost = N_JOBS - counts.get(JobState.SUCCEEDED, 0)
    duplicates = sum(n - 1 for n in starts.values())
    print(f"\nlost={lost} duplicated={duplicates} (killed worker held up to {CONCURRENCY})")
    assert lost == 0
    assert left == 0  # every message deleted once its job was done
    assert set(starts) == {str(i) for i in range(N_JOBS)}
    assert duplicates <= 2 * CONCURRENCY


async def _jobs_in(backend: Backend, *states: str) -> int:
    assert isinstance(backend, StoredBeanstalkBackend)
    conn = await Connection.open(BEANSTALKD_HOST, BEANSTALKD_PORT, 10)
    try:
        stats = await conn.stats_tube(tube_of(backend.prefix, "default"))
    finally:
        await conn.close()
    return sum(int((stats or {}).get(f"current-jobs-{s}", 0)) for s in states)


# -- a private beanstalkd, restarted ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_beanstalkd(port: int, binlog: Path | None, fsync_ms: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("beanstalkd")
    if exe is None:
        unavailable("beanstalkd is not installed")
    cmd = [exe, "-l", "127.0.0.1", "-p", str(port)]
    if binlog is not None:
        cmd += ["-b", str(binlog), "-f", str(fsync_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_open("127.0.0.1", port, 0.2), 10, "beanstalkd to listen")
    return proc


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize(
    ("binlog", "fsync_ms"),
    [(True, 0), (True, 200), (False, 0)],
    ids=["binlog-f0", "binlog-f200", "no-binlog"],
)
async def test_a_restart_keeps_jobs_only_with_a_binlog(
    tmp_path: Path, binlog: bool, fsync_ms: int
) -> None:
    """Enqueue, kill -9 beanstalkd at once, start it again: with ``-b`` the job is still there
    (the binlog is written before beanstalkd answers; ``-f`` only decides when it is fsynced,
    which matters to a machine crash, not a process kill) and a backend that was connected
    before the restart runs it; without ``-b`` it is gone."""
    port = free_port()
    log_dir = tmp_path / "binlog" if binlog else None
    if log_dir is not None:
        log_dir.mkdir()
    server = start_beanstalkd(port, log_dir, fsync_ms)
    url = f"beanstalk://127.0.0.1:{port}/?prefix=r&store=sqlite:///{tmp_path / 'state.db'}"
    backend = from_url(url)
    assert isinstance(backend, StoredBeanstalkBackend)
    try:
        await backend.open()
        (rec,) = await backend.enqueue([new_job()])
        assert await claim_ids(backend, "elsewhere") == []  # its connections exist before
        await backend.wait_for_work(["elsewhere"], 0.05)
        kill9(server)
        server = start_beanstalkd(port, log_dir, fsync_ms)
        got: list[str] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            try:
                got = [j.id for j in await backend.claim(claim_request())]
            except BackendUnavailable:
                pass  # the first command after the restart finds its connection gone
            if not got:
                await backend.wait_for_work([QUEUE], 0.2)
        assert got == ([rec.id] if binlog else [])
    finally:
        await backend.close()
        kill9(server)


# -- the hypothesis state machine (offload.testing.machine) ----------------------------------


@contextlib.asynccontextmanager
async def _machine_storage() -> AsyncIterator[Backend]:
    with tempfile.TemporaryDirectory(prefix="offload_machine_") as tmp:
        backend = from_url(beanstalk_url(unique_name("offload_m"), f"sqlite:///{tmp}/state.db"))
        assert isinstance(backend, StoredBeanstalkBackend)
        await backend.open()
        try:
            yield backend
        finally:
            tubes = sorted(backend.used_tubes())
            await backend.delete_tubes(tubes)
            await backend.close()


def test_backend_agrees_with_the_model() -> None:
    require_beanstalkd()
    run_state_machine_as_test(
        backend_machine(_machine_storage, delivers_at_once=False),
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- messages the store's recovery and the outbox put --------------------------------------


async def test_a_job_whose_worker_froze_gets_a_fresh_message(make_stalk: Make) -> None:
    """A's reservation stays (its connection is open, as a frozen process's is); once A's lease
    expires, B's recovery puts the job back, and B's next pass puts a fresh message for it."""
    a, b = await make_stalk(), await make_stalk()
    (rec,) = await a.enqueue([new_job()])
    assert await claim_ids(a) == [rec.id]  # leased for 30 s by default: shorten it
    await a.store.heartbeat([lease_of(await must_get(a, rec.id))], SHORT_LEASE_S)
    await asyncio.sleep(EXPIRY_WAIT_S)
    assert await b.recover() == 1
    assert await claim_ids(b) == []  # its message is still reserved by A
    await b.recover()  # still waiting with the same attempt: a fresh message
    (again,) = await b.claim(claim_request())
    assert (again.id, again.attempt) == (rec.id, 2)
    await b.complete([(lease_of(again), Succeeded())])
    await a.close()  # A's reservation comes back: the job is finished, the message deleted
    assert await claim_ids(b) == []
    assert await _jobs_in(b, "ready", "reserved", "delayed", "buried") == 0


async def test_a_job_started_after_its_recovery_gets_no_spare(make_stalk: Make) -> None:
    a, b = await make_stalk(), await make_stalk()
    (rec,) = await a.enqueue([new_job()])
    (got,) = await a.claim(claim_request(lease_s=SHORT_LEASE_S))
    await asyncio.sleep(EXPIRY_WAIT_S)
    await a._bs.close()  # killed: Beanstalkd releases the reservation at once
    assert await b.recover() == 1
    (again,) = await b.claim(claim_request())
    assert (got.id, again.id, again.attempt) == (rec.id, rec.id, 2)
    await b.recover()  # started meanwhile: nothing more is put
    assert await _jobs_in(b, "ready", "delayed") == 0


async def test_a_producer_that_died_before_its_puts_leaves_no_job_behind(
    tmp_path: Path,
) -> None:
    """The outbox: the store write happened (with its marker), the put did not."""
    require_beanstalkd()
    url = beanstalk_url(unique_name("offload_o"), f"sqlite:///{tmp_path / 'state.db'}")
    backend = from_url(f"{url}&orphan_after_s=0.2")
    assert isinstance(backend, StoredBeanstalkBackend)
    await backend.open()
    try:
        job = new_job()
        marker = backend._outbox.marker([job.id])
        await backend.store.enqueue([job, marker])  # as enqueue does, then "dies"
        assert await claim_ids(backend) == []  # no message
        await asyncio.sleep(0.3)
        await backend.recover()  # the marker came due: the job is put
        assert await claim_ids(backend) == [job.id]
    finally:
        await backend.delete_tubes(sorted(backend.used_tubes()))
        await backend.close()


async def test_a_claim_naming_its_jobs_leaves_held_early_jobs_alone(make_stalk: Make) -> None:
    """Beanstalkd's delays are whole seconds, so a job due in 0.4 s is delivered at once and
    held here until due. A later claim naming other jobs must not start it (contract:
    with job_ids, only those are candidates)."""
    b = await make_stalk()
    early = new_job(delay_s=0.4)
    named = new_job()
    await b.enqueue([early])
    assert await b.claim(claim_request()) == []  # reserved, not yet due: held
    await b.enqueue([named])
    await asyncio.sleep(0.5)  # the held job is due now: its own delay, not a wait for work
    req = claim_request(limit=5)
    got = await b.claim(msgspec.structs.replace(req, job_ids=(named.id,)))
    assert [r.id for r in got] == [named.id]
    rest = await b.claim(req)
    assert [r.id for r in rest] == [early.id]
