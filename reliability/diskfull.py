"""SQLite on a disk that fills up: the database lives on a small tmpfs the test mounts; while
workers run and the harness keeps enqueuing, a filler file takes every free byte, stays a
while, and is deleted.

Enqueue must fail with :class:`offload.StorageFull` saying the disk is full (never a raw
sqlite3 error, never a success that was not stored), each worker must log the condition at a
bounded rate (its stderr is counted), and once space is back everything resumes on its own:
every acknowledged job finishes, nothing else is stored, ``PRAGMA integrity_check`` says ok.
"""

from __future__ import annotations

import errno
import itertools
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import offload
from reliability.harness import RESTART_BOUND_S, Failure, Result, Run
from reliability.outage import time_to_resume
from reliability.scenarios import Form

SIZE = "8m"  # room for the database of a few thousand jobs; small enough to fill in a moment
SLOTS, WORKERS = 4, 2
JOB_S = 0.02
ACROSS_S = 1.0  # jobs that are running when the disk fills
TICK_S = 0.05  # the producer's pace: a batch of BATCH jobs every tick
BATCH = 5
# The bound on each worker's log: 16 lines for an episode (a failure and a "works again" for
# each of claim, outcomes, heartbeat and recovery, which can flap on a disk with a few free pages;
# the jobs put back), then one line per 5 s of outage. A line per failure (heartbeat and recovery
# every 0.5 s here) is a storm: ~60 lines in the short form's 8 s.
LOG_LINES_BASE, LOG_LINE_EVERY_S = 16, 5.0


class MountRefused(Exception):
    """A tmpfs cannot be mounted here (not root, or no permission in this container)."""


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``path`` for the block; always unmounted afterwards."""
    if os.geteuid() != 0:
        raise MountRefused("mounting a tmpfs needs root")
    path.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise MountRefused(f"mount -t tmpfs refused: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        _umount(path)


def _umount(path: Path) -> None:
    for _ in range(50):  # a process that just exited may hold a file for a moment
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem has no byte left; the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written, chunk = 0, b"\0" * (1 << 20)
    try:
        while True:
            try:
                written += os.write(fd, chunk)  # a short write fills the last bytes
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written
    finally:
        os.close(fd)


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)


def disk_full(kind: str, run: Run, result: Result, form: Form) -> None:
    if kind != "sqlite":
        result.skipped = "SQLite only (an embedded file on a disk that the test can fill)"
        return
    try:
        with tmpfs(run.workdir / "disk", SIZE) as disk:
            inner = Run(f"sqlite:///{disk / 'jobs.db'}", run.workdir)  # ledger off the tmpfs
            try:
                _scenario(inner, result, form, disk)
            finally:
                inner.close()
    except MountRefused as exc:
        result.skipped = str(exc)


def _scenario(run: Run, result: Result, form: Form, disk: Path) -> None:
    numbers = itertools.count()
    run.enqueue("record", [next(numbers) for _ in range(100)], sleep_s=JOB_S)
    procs = [run.start_worker(SLOTS) for _ in range(WORKERS)]
    run.wait_until(lambda: run.count("F") > 0, form.timeout_s, "the first job to finish")
    refused: list[str] = []  # StorageFull messages
    unclean: list[str] = []  # any other failure of an enqueue

    def produce(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            batch = [next(numbers) for _ in range(BATCH)]
            try:
                run.enqueue("record", batch, sleep_s=JOB_S)
            except offload.StorageFull as exc:
                refused.append(str(exc))
            except Exception as exc:
                unclean.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
            time.sleep(TICK_S)  # the producer's pace, not a wait for a condition

    produce(1.0)
    # Jobs that run across the fill: their outcomes, heartbeats and recovery all meet the
    # full disk, and their leases expire during it.
    run.enqueue("record", [next(numbers) for _ in range(SLOTS * WORKERS)], sleep_s=ACROSS_S)
    run.wait_until(
        lambda: run.count("S") >= len(run.ids) - 4, form.timeout_s, "the long jobs to start"
    )
    t_held = time.time()
    held = {i for p in procs for i in run.held_by(p.pid)}  # running, or outcome not yet stored
    t_fill = time.time()
    filler = disk / "filler"
    filled = fill(filler)
    produce(form.diskfull_s)
    acknowledged_while_full = len(run.ids)
    filler.unlink()
    t_free = time.time()
    result.recover_s = time_to_resume(run, next(numbers), form.timeout_s)
    produce(1.0)
    run.wait_all_final(form.timeout_s)
    for p in procs:
        run.stop_cleanly(p, result)
    run.tally(result)
    stored = len(run.records())
    check = integrity(disk / "jobs.db")
    events = run.events()
    starts: dict[int, list[float]] = {}
    for e in events:
        if e.kind == "S":
            starts.setdefault(e.i, []).append(e.t)
    # Only jobs in flight while the disk was full may run twice: their outcomes could not be
    # recorded, their leases expired, and recovery may put them back before the outcome lands.
    in_flight = held | {i for i, ts in starts.items() if t_held <= ts[0] <= t_free}
    logs = [_log_figures(run.workdir / f"worker{n}.log") for n in range(1, len(procs) + 1)]
    bound = LOG_LINES_BASE + int(form.diskfull_s / LOG_LINE_EVERY_S)
    result.notes.append(
        f"tmpfs {SIZE} filled with {filled / 1e6:.1f} MB for {t_free - t_fill:.1f}s; "
        f"{len(refused)} enqueue batches refused with StorageFull "
        f"({refused[0] if refused else 'none'!r}); {len(run.ids) - acknowledged_while_full} "
        f"jobs acknowledged after the space was freed; worker log lines "
        f"{[n for n, _, _ in logs]} (bound {bound} each), tracebacks "
        f"{sum(t for _, t, _ in logs)}; integrity_check: {check}"
    )
    result.expect(bool(refused), "no enqueue failed while the disk was full")
    result.expect(all("disk" in m and "full" in m for m in refused), "a refusal not saying so")
    result.expect(not unclean, f"enqueue failed uncleanly: {unclean[:3]}")
    result.expect(stored == len(run.ids), f"{stored - len(run.ids)} stored, never acknowledged")
    for n, (lines, tracebacks, said_full) in enumerate(logs, 1):
        result.expect(lines <= bound, f"worker {n} logged {lines} lines (more than {bound})")
        result.expect(tracebacks == 0, f"worker {n} logged {tracebacks} tracebacks")
        result.expect(said_full, f"worker {n} never logged that the disk was full")
    result.expect(check == "ok", f"integrity_check: {check}")
    result.expect(result.lost == 0, f"{result.lost} jobs lost")
    result.expect_twice_within(in_flight, "a worker whose outcomes met the full disk")
    result.expect_within(
        "work resumed after the space was freed in", result.recover_s, RESTART_BOUND_S
    )


def _log_figures(log: Path) -> tuple[int, int, bool]:
    """A worker's stderr: lines, tracebacks, and whether it said the disk was full."""
    if not log.exists():
        raise Failure(f"no worker log {log}")
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    tracebacks = sum(1 for ln in lines if ln.startswith("Traceback"))
    said = any("StorageFull" in ln and "full" in ln for ln in lines)
    return len(lines), tracebacks, said
