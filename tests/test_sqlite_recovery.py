"""The sqlite:// backend's recovery of expired leases: found and written in one writer
transaction, the decision from the one rule (offload.backends.common), fenced on the lease."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import TypeVar

import pytest

from offload.backends.sqlite.recovery import find_expired, write_expired
from offload.job import JobState
from offload.outcome import Succeeded
from offload.testing import lease_of, must_get
from tests import sqlite_support
from tests.sqlite_support import Factory, claim, job

T = TypeVar("T")

backends = sqlite_support.backends  # the fixture: a factory of backends on one per-test file


async def test_recover_and_heartbeat(backends: Factory) -> None:
    b = await backends()
    await b.enqueue([job(), job()])
    first, second = await b.claim(claim(lease_s=0.05))
    assert first.lease is not None and second.lease is not None
    assert await b.heartbeat([first.lease], 30.0) == {first.id}
    await asyncio.sleep(0.1)  # the point: let the second lease expire
    assert await b.recover() == 1
    back = await b.get(second.id)
    assert back is not None and back.state is JobState.QUEUED and back.attempt == 1
    assert back.errors[-1].error == "lease expired (worker lost)"


async def test_recovery_write_is_fenced_on_the_lease_it_found(backends: Factory) -> None:
    """A decision made for an expired lease is written only while that lease still stands:
    a job completed, heartbeated or re-leased between the find and the write is left alone."""
    b = await backends()
    done, beating, released = await b.enqueue([job(), job(), job()])
    running = {r.id: r for r in await b.claim(claim(lease_s=0.0))}  # expired at once
    found_at = time.time()
    stale = await b._write(lambda conn: find_expired(conn, found_at, 10))
    assert {d.id for d in stale} == {done.id, beating.id, released.id}
    await b.complete([(lease_of(running[done.id]), Succeeded(None))])
    assert await b.heartbeat([lease_of(running[beating.id])], 30.0) == {beating.id}
    only_released = [d for d in stale if d.id == released.id]
    assert await b._write(lambda conn: write_expired(conn, only_released, found_at)) == 1
    (again,) = await b.claim(claim(worker="w2", lease_s=0.0))  # attempt 2, expired too
    assert again.id == released.id and again.attempt == 2

    # The fence, job by job: done is no longer running and holds no lease; beating holds the
    # same lease, no longer expired; released is expired again, under another attempt.
    now = time.time()
    assert await b._write(lambda conn: write_expired(conn, stale, now)) == 0
    finished = await must_get(b, done.id)
    assert finished.state is JobState.SUCCEEDED and finished.errors == ()
    kept = await must_get(b, beating.id)
    assert kept.state is JobState.RUNNING and kept.errors == ()
    assert kept.worker_id == "w" and kept.attempt == 1
    relet = await must_get(b, released.id)
    assert relet.state is JobState.RUNNING and (relet.attempt, relet.worker_id) == (2, "w2")
    assert [(e.attempt, e.worker_id) for e in relet.errors] == [(1, "w")]


async def test_recover_goes_on_batch_after_batch(
    backends: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("offload.backends.sqlite.backend.RECOVER_BATCH", 3)
    b = await backends()
    await b.enqueue([job() for _ in range(7)])
    await b.claim(claim(lease_s=0.0))
    assert await b.recover() == 7
    assert await b.claim(claim()) != []  # all back in the queue
    assert await b.recover() == 0


async def test_recovery_skips_a_row_with_unreadable_counters(
    backends: Factory, tmp_path: Path
) -> None:
    """Stored rows are untrusted: an expired job whose attempt does not read as an integer
    must not make every recovery pass fail; the readable ones are still put back."""
    b = await backends()
    broken, fine = await b.enqueue([job(), job()])
    await b.claim(claim(lease_s=0.0))
    raw = sqlite3.connect(tmp_path / "jobs.db")
    with raw:
        raw.execute("UPDATE offload_jobs SET attempt = 'x' WHERE id = ?", (broken.id,))
    raw.close()
    assert await b.recover() == 1
    assert (await must_get(b, fine.id)).state is JobState.QUEUED
    assert await b.recover() == 0  # still skipped, never an error
