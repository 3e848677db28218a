"""Soak: a steady load for minutes while the worker processes' memory and open file handles are
sampled from /proc; after a warm-up they must stay flat.

Two workers take ``form.soak_rate`` short jobs a second for ``form.soak_s``. Every second the
harness reads each worker's ``VmRSS`` and ``Threads`` (``/proc/<pid>/status``) and counts its
open descriptors (``/proc/<pid>/fd``, minus the ledger that a running task holds open for a
moment). The warm-up (imports finished, thread pool started, connection pools and caches
filled) is not judged. After it:

* **memory**: the median RSS of the last five samples may exceed the median of the first five
  after the warm-up by at most ``RSS_GROWTH_KB``;
* **file handles**: no sample may exceed the warm-up's highest count by more than
  ``FD_GROWTH``.

And, as everywhere: every job completes, none lost, none run twice (nothing is killed here).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from reliability.harness import Failure, Result, Run
from reliability.scenarios import Form

SLOTS, WORKERS = 8, 2
JOB_S = 0.005  # short jobs: the load is many jobs, not long ones
TICK_S = 0.1  # the producer enqueues what is due every tick, in one batch
SAMPLE_S = 1.0
WINDOW = 5  # samples in each median
# CPython takes memory from the system in 1 MiB arenas and glibc keeps freed memory for reuse,
# so a worker that leaks nothing still wanders a little: at most 0.4 MiB on any backend here, in
# either form (docs/reliability.md). 2 MiB is five times that; a leak of 1.2 KiB per job crosses
# it in the short form (~1,700 jobs per worker after the warm-up), 60 bytes per job in the full
# form (~36,000 per worker). A 4 KiB-per-job leak planted in the task grew RSS by 4.4-5.3 MiB in
# the short form.
RSS_GROWTH_KB = 2 * 1024
# A connection pool may open one more connection for a rare overlap of its users (claim, a
# completion batch, a heartbeat); a leak of one descriptor per job or per reconnect goes far past.
FD_GROWTH = 2


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started
    rss_kb: int
    fds: int
    threads: int


def sample(pid: int, t: float, ignore: str) -> Sample:
    """One reading of process ``pid``; descriptors open on ``ignore`` (the ledger) not counted."""
    status: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    fds = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed since the listing
            continue
        fds += target != ignore
    return Sample(t, int(status["VmRSS"].split()[0]), fds, int(status["Threads"]))


def soak(kind: str, run: Run, result: Result, form: Form) -> None:
    if kind not in form.soak_kinds:
        result.skipped = f"the {form.name} form soaks {', '.join(form.soak_kinds)} only"
        return
    procs = [run.start_worker(SLOTS) for _ in range(WORKERS)]
    run.enqueue("record", [0], sleep_s=JOB_S)
    run.wait_until(lambda: run.count("F") > 0, form.timeout_s, "the first job to finish")
    samples: dict[int, list[Sample]] = {p.pid: [] for p in procs}
    ledger = str(run.ledger.resolve())
    t0 = time.monotonic()
    sent, next_sample, backlog = 1, 0.0, 0
    while (now := time.monotonic() - t0) < form.soak_s:
        due = 1 + int(form.soak_rate * now) - sent
        if due > 0:  # one batch per tick; a late tick catches up
            sent += len(run.enqueue("record", range(sent, sent + due), sleep_s=JOB_S))
        if now >= next_sample:
            for p in procs:
                if p.poll() is not None:
                    raise Failure(f"worker {p.pid} exited ({p.returncode}) during the soak")
                samples[p.pid].append(sample(p.pid, now, ledger))
            if len(samples[procs[0].pid]) % 5 == 0:
                counts = run.counts()
                backlog = max(backlog, sum(n for s, n in counts.items() if not s.final))
            next_sample += SAMPLE_S
        time.sleep(max(0.0, min(TICK_S, t0 + next_sample - time.monotonic())))
    elapsed = time.monotonic() - t0
    drained = run.wait_until(lambda: run.finished() >= sent, form.timeout_s, "the backlog")
    run.wait_all_final(form.timeout_s)
    for p in procs:
        run.stop_cleanly(p, result)
    run.tally(result)
    result.notes.append(
        f"{sent} jobs in {elapsed:.0f}s ({sent / elapsed:.0f}/s), backlog at most {backlog}, "
        f"drained {drained:.1f}s after the load stopped"
    )
    for p in procs:
        _judge(result, p.pid, samples[p.pid], form.soak_warmup_s)
    result.expect(result.lost == 0, f"{result.lost} jobs lost")
    result.expect_twice_within((), "anyone (nothing is killed here)")


def _judge(result: Result, pid: int, samples: list[Sample], warmup_s: float) -> None:
    """Flat after the warm-up: RSS within RSS_GROWTH_KB, descriptors within FD_GROWTH."""
    warm = [s for s in samples if s.t < warmup_s]
    after = [s for s in samples if s.t >= warmup_s]
    if not warm or len(after) < 2 * WINDOW:
        raise Failure(f"worker {pid}: {len(after)} samples after the warm-up, too few to judge")
    first = statistics.median(s.rss_kb for s in after[:WINDOW])
    last = statistics.median(s.rss_kb for s in after[-WINDOW:])
    growth_kb = last - first
    fd_warm = max(s.fds for s in warm)
    fd_peak = max(s.fds for s in after)
    result.notes.append(
        f"worker {pid}: RSS {warm[0].rss_kb / 1024:.1f} MiB at start, {first / 1024:.1f} after "
        f"the warm-up, {last / 1024:.1f} at the end ({growth_kb / 1024:+.1f} MiB, peak "
        f"{max(s.rss_kb for s in samples) / 1024:.1f}); open files {warm[0].fds} at start, "
        f"at most {fd_warm} in the warm-up, {min(s.fds for s in after)} to {fd_peak} after, "
        f"{after[-1].fds} at the end; threads {after[0].threads}→{after[-1].threads}"
    )
    result.expect(
        growth_kb <= RSS_GROWTH_KB,
        f"worker {pid}: RSS grew {growth_kb / 1024:.1f} MiB after the warm-up "
        f"(tolerance {RSS_GROWTH_KB / 1024:.0f} MiB)",
    )
    result.expect(
        fd_peak <= fd_warm + FD_GROWTH,
        f"worker {pid}: {fd_peak} open files after the warm-up, warm-up peak {fd_warm} "
        f"(tolerance +{FD_GROWTH})",
    )
