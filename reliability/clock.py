"""Clock steps on the worker's machine: the wall clock of one worker process jumps an hour
ahead, then an hour back, while it runs jobs and delayed jobs wait.

The design's rule is one clock, the backend's, for run_at and leases. Redis (TIME inside its
scripts) and PostgreSQL (now()) keep it, so the steps must change nothing: no delayed job
starts early, none late by more than a wake-up, no lease is lost (every job ends at its first
attempt), nothing is lost or run twice. The worker's wall clock (Python's ``time.time``) is
stepped by ``reliability/clockstep/sitecustomize.py``, reading an offset from a file the
harness rewrites; the monotonic clock is left alone, as NTP leaves it. SQLite and the
brokers' SQLite stores keep the time of the machine they run on: one machine, one clock,
nothing to step apart.
"""

from __future__ import annotations

import time
from pathlib import Path

from reliability.harness import Result, Run
from reliability.scenarios import Form

CLOCKSTEP = Path(__file__).resolve().parent / "clockstep"
STEP_S = 3600
DELAY_S = 4.0  # the delayed jobs' delay: the steps happen while they wait
LATE_BOUND_S = 2.5  # a delayed job starts within this of its time (a wake-up, a claim)
NOT_APPLICABLE = {
    "sqlite": "one clock for SQLite: the file and its workers share a machine",
    "rabbitmq": "one clock for the SQLite store of this run: it shares the worker's machine",
    "beanstalkd": "one clock for the SQLite store of this run: it shares the worker's machine",
}


def clock_step(kind: str, run: Run, result: Result, form: Form) -> None:
    if kind in NOT_APPLICABLE:
        result.skipped = NOT_APPLICABLE[kind]
        return
    clock = run.workdir / "clock-offset"
    clock.write_text("0\n")
    env = {"PYTHONPATH": str(CLOCKSTEP), "RELIABILITY_CLOCK_FILE": str(clock)}
    w = run.start_worker(6, env=env)
    run.enqueue("record", range(20), sleep_s=0.2)
    run.wait_until(lambda: run.count("F") > 0, form.timeout_s, "the first job to finish")
    delayed = run.enqueue("record", range(100, 106), sleep_s=0.0, delay_s=DELAY_S)
    t_due = time.time() + DELAY_S
    for offset in (STEP_S, -STEP_S, 0):
        clock.write_text(f"{offset}\n")
        run.enqueue("record", range(run_next(run), run_next(run) + 10), sleep_s=0.2)
        time.sleep(0.8)  # the worker lives on this clock for a while: the steps are the fault
    early = {e.i for e in run.events() if e.kind == "S" and e.i in delayed}
    in_time = time.time() < t_due - 0.2
    result.expect(
        not (in_time and early), f"delayed jobs {sorted(early)} started before their time"
    )
    run.wait_all_final(form.timeout_s)
    run.stop_cleanly(w, result)
    by_i = run.tally(result)
    late = [rec.started_at - rec.run_at for i in delayed if (rec := by_i[i]).started_at is not None]
    result.recover_s = max(late, default=None)
    result.expect(len(late) == len(delayed), "a delayed job has no start time")
    result.expect(min(late, default=0.0) >= 0.0, f"a delayed job started {min(late):.2f}s early")
    retried = sorted(i for i, rec in by_i.items() if rec.attempt != 1)
    result.expect(not retried, f"jobs {retried[:10]} took more than one attempt (a lease lost)")
    result.notes.append(
        f"the worker's clock stepped +{STEP_S}s, -{STEP_S}s and back while {len(delayed)} "
        f"delayed jobs waited ({'checked' if in_time else 'too slow to check'} before their "
        "time); time to recover: the latest start after a delayed job's time"
    )
    result.expect(result.lost == 0, f"{result.lost} jobs lost")
    result.expect_twice_within(set(), "nobody (nothing was killed)")
    result.expect_within("a delayed job started after its time by", result.recover_s, LATE_BOUND_S)


def run_next(run: Run) -> int:
    """The next unused job number below the delayed ones' range."""
    return max((i for i in run.ids if i < 100), default=-1) + 1
