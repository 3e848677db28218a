"""Retention soak: under a steady load, with retention on, the storage a backend uses stays flat.

Two workers take ``form.soak_rate`` short jobs a second for ``form.retention_soak_s``. The
retention is tiny (succeeded jobs are kept ``RETAIN_S``) and the harness runs the backend's
``run_maintenance`` every ``PRUNE_EVERY_S``, as every worker does once a minute with the default
of days: the same code, in seconds instead of days. Every second it measures what this run's
data takes:

* **SQLite**: the database's size, ``page_count * page_size`` read by a connection of its own
  (the size the file has once the WAL is checkpointed into it; freed pages given back by the
  incremental vacuum are not counted);
* **Redis**: ``MEMORY USAGE`` summed over this run's keys (its own prefix: the server is
  shared), claim tokens apart (``CLAIM_TOKEN``).

After a warm-up of a few seconds, the median of the last five samples may exceed the median of
the first five by at most ``GROWTH`` (a fraction) plus ``SLACK_BYTES``. And, as everywhere:
every acknowledged job ran to its finish line once, none lost, none run twice (records are
deleted as they go, so the ledger is the witness here).
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import offload
from reliability.harness import Failure, Result, Run
from reliability.scenarios import Form

SLOTS, WORKERS = 8, 2
JOB_S = 0.005
TICK_S = 0.1
SAMPLE_S = 1.0
WINDOW = 5
RETAIN_S = 1.0  # succeeded jobs: 1 s instead of the default 3 days
PRUNE_EVERY_S = 1.0  # run_maintenance: every second instead of every minute
# Without retention the short form's load (200 jobs/s) grows a SQLite database by about
# 0.4 MB/s and this run's Redis keys by about 0.3 MB/s, so the data doubles within seconds of
# the warm-up; with it, the data wanders by a few percent with the backlog of the moment.
GROWTH = 0.25
SLACK_BYTES = 64 * 1024
KINDS = ("sqlite", "redis")
# Redis claim tokens (a retried claim returns what the first took) expire after 60 s by design:
# over a soak shorter than that they only accumulate, whatever the retention, so they are not
# counted (they are no job data, and their TTL bounds them).
CLAIM_TOKEN = b":ct:"
# The stored jobs reach their steady number once the first ones have aged past RETAIN_S and a
# prune has run: a few seconds. Not the worker soak's warm-up, which waits for RSS to settle.
WARMUP_S = 4 * max(RETAIN_S, PRUNE_EVERY_S)


@dataclass(frozen=True)
class Sample:
    t: float
    used: int  # bytes of this run's data
    jobs: int  # jobs stored


def retention_soak(kind: str, run: Run, result: Result, form: Form) -> None:
    if kind not in form.soak_kinds:  # the soak's rule (CI time), and its skip reason
        result.skipped = f"the {form.name} form soaks {', '.join(form.soak_kinds)} only"
        return
    if kind not in KINDS:
        result.skipped = f"the retention soak measures {', '.join(KINDS)} only"
        return
    pruner = offload.App(_with_retention(run.url))
    slowest: list[str] = []  # the slowest sampling step, when one starved the sampler
    try:
        samples, sent, deleted, elapsed = _load(kind, run, pruner, form, slowest)
        run.wait_until(lambda: run.count("F") >= sent, form.timeout_s, "the backlog")
        run.wait_until(lambda: _active(run) == 0, form.timeout_s, "the last completions")
    finally:
        pruner.close_sync()
    for p in list(run.workers):
        run.stop_cleanly(p, result)
    _tally(run, result)
    result.notes.append(
        f"{sent} jobs in {elapsed:.0f}s ({sent / elapsed:.0f}/s); retention deleted {deleted}"
    )
    result.notes.extend(slowest)
    _judge(kind, result, samples, WARMUP_S)


def _load(
    kind: str, run: Run, pruner: offload.App, form: Form, slowest: list[str]
) -> tuple[list[Sample], int, int, float]:
    for _ in range(WORKERS):
        run.start_worker(SLOTS)
    run.enqueue("record", [0], sleep_s=JOB_S)
    run.wait_until(lambda: run.count("F") > 0, form.timeout_s, "the first job to finish")
    samples: list[Sample] = []
    t0 = time.monotonic()
    sent, deleted, next_sample = 1, 0, 0.0
    worst = 0.0
    while (now := time.monotonic() - t0) < form.retention_soak_s:
        due = 1 + int(form.soak_rate * now) - sent
        if due > 0:
            sent += len(run.enqueue("record", range(sent, sent + due), sleep_s=JOB_S))
        if now >= next_sample:
            for p in run.workers:
                if p.poll() is not None:
                    raise Failure(f"worker {p.pid} exited ({p.returncode}) during the soak")
            t_prune = time.monotonic()
            deleted += pruner.run_sync(lambda b: b.run_maintenance())
            t_measure = time.monotonic()
            samples.append(Sample(now, _used_bytes(kind, run.url), sum(run.counts().values())))
            prune_s, measure_s = t_measure - t_prune, time.monotonic() - t_measure
            if prune_s + measure_s > max(worst, SAMPLE_S):
                worst = prune_s + measure_s
                slowest[:] = [
                    f"slowest sample: a prune pass of {prune_s:.1f}s, "
                    f"a measure of {measure_s:.1f}s at {now:.0f}s"
                ]
            next_sample += max(SAMPLE_S, PRUNE_EVERY_S)
        time.sleep(max(0.0, min(TICK_S, t0 + next_sample - time.monotonic())))
    return samples, sent, deleted, time.monotonic() - t0


def _with_retention(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}retention_succeeded={RETAIN_S}"


def _active(run: Run) -> int:
    return sum(n for state, n in run.counts().items() if not state.final)


def _used_bytes(kind: str, url: str) -> int:
    if kind == "sqlite":
        path = urlsplit(url).path[1:]
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(pages) * int(size)
    import redis  # only the Redis kind needs it

    prefix = dict(p.split("=", 1) for p in urlsplit(url).query.split("&") if "=" in p)["prefix"]
    client = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        keys = [
            key
            for pattern in ("{" + prefix + ":*", "{" + prefix + "}*")
            for key in client.scan_iter(match=pattern, count=1000)
            if CLAIM_TOKEN not in key
        ]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(int(n or 0) for n in pipe.execute())
    finally:
        client.close()


def _tally(run: Run, result: Result) -> None:
    """From the ledger: the records of succeeded jobs are deleted as the run goes."""
    events = run.events()
    starts: dict[int, int] = {}
    for e in events:
        if e.kind == "S":
            starts[e.i] = starts.get(e.i, 0) + 1
    finished = {e.i for e in events if e.kind == "F"}
    result.acknowledged = len(run.ids)
    result.completed = sum(1 for i in run.ids if i in finished)
    result.lost = result.acknowledged - result.completed
    result.twice = {i for i, n in starts.items() if n > 1}
    result.duplicated = len(result.twice)
    result.expect(result.lost == 0, f"{result.lost} jobs never finished")
    result.expect_twice_within((), "anyone (nothing is killed here)")
    dead = run.counts().get(offload.JobState.DEAD, 0)
    result.expect(dead == 0, f"{dead} jobs dead that should have run")


def _judge(kind: str, result: Result, samples: list[Sample], warmup_s: float) -> None:
    after = [s for s in samples if s.t >= warmup_s]
    if len(after) < 2 * WINDOW:
        raise Failure(f"{len(after)} samples after the warm-up, too few to judge")
    first = statistics.median(s.used for s in after[:WINDOW])
    last = statistics.median(s.used for s in after[-WINDOW:])
    bound = first * (1 + GROWTH) + SLACK_BYTES
    what = "database size" if kind == "sqlite" else "memory of this run's keys"
    result.notes.append(
        f"{what}: {samples[0].used / 1024:.0f} KiB at start, {first / 1024:.0f} after the "
        f"warm-up, {last / 1024:.0f} at the end (peak {max(s.used for s in samples) / 1024:.0f});"
        f" jobs stored {after[0].jobs}→{after[-1].jobs} (peak {max(s.jobs for s in samples)})"
    )
    result.expect(
        last <= bound,
        f"{what} grew from {first / 1024:.0f} KiB to {last / 1024:.0f} KiB after the warm-up "
        f"(bound {bound / 1024:.0f} KiB) with retention on",
    )
