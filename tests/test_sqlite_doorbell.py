"""The sqlite:// backend's doorbell: cross-process wake-ups (Linux)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from offload.backends.sqlite import SQLiteBackend, doorbell
from offload.errors import (
    ConfigurationError,
)
from offload.job import JobState
from offload.outcome import Succeeded
from tests import sqlite_support
from tests.sqlite_support import Factory, claim, job, offload_threads, open_fds_on

T = TypeVar("T")

backends = sqlite_support.backends  # the fixture: a factory of backends on one per-test file

needs_doorbell = pytest.mark.skipif(not doorbell.supported(), reason="the doorbell is Linux only")


def doorbell_threads() -> list[threading.Thread]:
    return [t for t in offload_threads() if t.name.startswith("offload-sqlite-doorbell")]


async def started(coro: Awaitable[T]) -> asyncio.Task[T]:
    """A task already past its first step: a waiter has registered before this returns."""
    task: asyncio.Task[T] = asyncio.ensure_future(coro)
    await asyncio.sleep(0)
    return task


@needs_doorbell
async def test_doorbell_wakes_a_waiter_of_another_instance_at_once(backends: Factory) -> None:
    # poll_ms=10000: without a ring the waiter would only look at the file after 10 s
    waiting, producer = await backends(poll_ms=10_000), await backends()
    waiter = await started(waiting.wait_for_work(["q"], timeout_s=30))
    await producer.enqueue([job()])
    await asyncio.wait_for(waiter, timeout=1)


@needs_doorbell
async def test_doorbell_wakes_wait_done_of_another_instance(backends: Factory) -> None:
    waiting, worker = await backends(poll_ms=10_000), await backends()
    (rec,) = await worker.enqueue([job()])
    waiter = await started(waiting.wait_done(rec.id, timeout_s=30))
    (running,) = await worker.claim(claim())
    assert running.lease is not None
    await worker.complete([(running.lease, Succeeded(b"1"))])
    done = await asyncio.wait_for(waiter, timeout=1)
    assert done is not None and done.state is JobState.SUCCEEDED


_ENQUEUER = """
import asyncio, sys, time
from offload.backends.sqlite import SQLiteBackend
from offload.job import NewJob, new_job_id

async def main():
    b = SQLiteBackend(sys.argv[1])
    await b.open()
    await b.enqueue([NewJob(id=new_job_id(), task="t", queue="q", args=b"{}")])
    print(time.time(), flush=True)
    await b.close()

asyncio.run(main())
"""


@needs_doorbell
async def test_doorbell_wakes_a_waiter_on_another_processes_enqueue(backends: Factory) -> None:
    waiting = await backends(poll_ms=10_000)
    waiter = await started(waiting.wait_for_work(["q"], timeout_s=30))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ENQUEUER, waiting.url, stdout=subprocess.PIPE
    )
    await asyncio.wait_for(waiter, timeout=8)  # the process starts slowly; 10 s is the poll
    woken_at = time.time()
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert woken_at - float(out) < 1.0


@needs_doorbell
async def test_doorbell_removes_the_entry_of_a_listener_that_is_gone(backends: Factory) -> None:
    b = await backends()
    wake = Path(doorbell.registry_dir(b.path))
    os.makedirs(wake)
    gone = [wake / f"{doorbell.scope()}-999999-0badc0de.{kind}" for kind in ("work", "done")]
    elsewhere = wake / "1-2-3.work"  # another network namespace: neither rung nor judged here
    for entry in [*gone, elsewhere]:
        entry.touch()
    await b.enqueue([job()])
    assert not gone[0].exists() and not gone[1].exists()
    assert elsewhere.exists()


@needs_doorbell
async def test_a_ring_never_causes_another_ring(backends: Factory) -> None:
    one, two = await backends(poll_ms=10_000), await backends(poll_ms=10_000)
    own = await started(one.wait_for_work(["other"], timeout_s=30))
    waiter = await started(two.wait_for_work(["q"], timeout_s=30))
    await one.enqueue([job()])
    await asyncio.wait_for(waiter, timeout=1)
    await asyncio.wait_for(own, timeout=1)  # woken by its own instance, without a ring
    assert one._doorbell is not None and two._doorbell is not None
    await two.close()  # its thread has handled the ring and ended: what it sent is counted
    await one.close()
    assert (one._doorbell.sent, two._doorbell.heard, two._doorbell.sent) == (1, 1, 0)


@needs_doorbell
async def test_close_stops_the_doorbell_and_removes_its_entries(tmp_path: Path) -> None:
    b = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db")
    await b.open()
    await b.wait_for_work(["q"], timeout_s=0.01)
    assert await b.wait_done("missing", timeout_s=0.01) is None
    wake = tmp_path / "jobs.db-wake"
    assert len(doorbell_threads()) == 1
    assert sorted(p.suffix for p in wake.iterdir()) == [".done", ".work"]
    await b.close()
    assert offload_threads() == [] and not wake.exists()  # the last listener removes it
    assert open_fds_on(tmp_path) == []
    await b.open()  # and it starts afresh when opened again
    await b.wait_for_work(["q"], timeout_s=0.01)
    assert len(doorbell_threads()) == 1
    await b.close()
    assert offload_threads() == []


@needs_doorbell
async def test_doorbell_puts_back_a_removed_entry(backends: Factory) -> None:
    waiting, producer = await backends(poll_ms=10_000), await backends()
    await waiting.wait_for_work(["q"], timeout_s=0.01)
    wake = Path(doorbell.registry_dir(waiting.path))
    (name,) = os.listdir(wake)
    entry = wake / name
    os.unlink(entry)  # a clean-up by hand; the listener checks every second
    deadline = time.monotonic() + 5
    while not entry.exists():
        assert time.monotonic() < deadline, "the entry was not put back"
        await asyncio.sleep(0.05)
    waiter = await started(waiting.wait_for_work(["q"], timeout_s=30))
    await producer.enqueue([job()])
    await asyncio.wait_for(waiter, timeout=1)


async def test_doorbell_0_turns_it_off(backends: Factory, tmp_path: Path) -> None:
    waiting = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db?doorbell=0&poll_ms=20")
    await waiting.open()
    try:
        producer = await backends()
        waiter = await started(waiting.wait_for_work(["q"], timeout_s=30))
        await producer.enqueue([job()])
        await asyncio.wait_for(waiter, timeout=2)  # the poll still finds the work
        assert doorbell_threads() == [] and not (tmp_path / "jobs.db-wake").exists()
    finally:
        await waiting.close()
    assert SQLiteBackend("sqlite:////tmp/x.db", doorbell=False)._doorbell is None
    with pytest.raises(ConfigurationError, match="doorbell"):
        SQLiteBackend("sqlite:////tmp/x.db?doorbell=maybe")


@needs_doorbell
async def test_a_listener_whose_queue_was_full_hears_what_it_missed(backends: Factory) -> None:
    b = await backends()
    assert b._doorbell is not None
    token = f"{doorbell.scope()}-{os.getpid()}-f0f0f0f0"
    wake = Path(doorbell.registry_dir(b.path))
    os.makedirs(wake)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.bind(doorbell.address(token))  # a listener that does not read: a stopped process
        peer.setblocking(False)
        for kind in ("work", "done"):
            (wake / f"{token}.{kind}").touch()
        for _ in range(10_000):  # until its queue is full
            sent = b._doorbell.sent
            b._doorbell.ring(work=True)
            if b._doorbell.sent == sent:
                break
        assert b._doorbell.sent < 10_000

        def heard() -> list[bytes]:
            out = []
            while True:
                try:
                    out.append(peer.recv(65536))
                except BlockingIOError:
                    return out

        assert set(heard()) == {b"\x01"}  # work
        b._doorbell.ring(done=["a"])
        assert heard() == [b"\x03"]  # only done "a" asked, but it may have missed anything
        b._doorbell.ring(done=["b"])
        assert heard() == [b'\x04["b"]']
