"""The tests: each runs real worker processes on one backend, injects its fault and fills a
:class:`~reliability.harness.Result`. Waits are on observable progress (ledger lines, backend
counts); the only deliberate pauses are the faults themselves (the storm's rhythm, the freeze).
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass

from offload.job import JobState
from reliability import faults
from reliability.app import POISON_ATTEMPTS
from reliability.harness import (
    RESTART_BOUND_S,
    Event,
    Failure,
    LeaseWatch,
    Result,
    Run,
    result_pid,
)
from reliability.isolation import KINDS


@dataclass(frozen=True)
class Form:
    """How big and how long: the short form runs in CI, the full form under ``make chaos``."""

    name: str
    storm_jobs: int
    storm_workers: int
    storm_concurrency: int
    storm_sleep_s: float
    kill_every_s: float
    min_kills: int
    graceful_jobs: int
    fault_rounds: int
    restart_postgres: bool  # both forms: pytest runs serially, so nothing else sees it down
    timeout_s: float
    diskfull_s: float  # how long the SQLite disk stays full
    soak_s: float  # the soak's steady load: for how long, after how long a warm-up, how fast
    soak_warmup_s: float
    soak_rate: int  # jobs per second
    soak_kinds: tuple[str, ...]  # the backends soaked (CI time)
    retention_soak_s: float = 15.0  # how long the retention soak's load lasts
    workflows: int = 30  # the workflow storm: this many chains of WORKFLOW_STEPS steps,
    workflow_step_s: float = 0.2  # each this long (the full form's kills need longer work)


# The graceful test reads every job back after the exit (a few dozen round trips): the states
# were already right at the exit, so this only bounds "back in the queue at once".
GRACEFUL_READ_BOUND_S = 5.0
# The completer writes an outcome as soon as the body returns (no timer); on a loaded machine
# that write may still be on its way this long after the finish line.
OUTCOME_LAG_S = 1.0

SHORT = Form(
    "short", 300, 3, 4, 0.05, 1.0, 2, 40, 2, True, 60.0,
    diskfull_s=8.0, soak_s=25.0, soak_warmup_s=8.0, soak_rate=200, soak_kinds=("sqlite", "redis"),
)  # fmt: skip
FULL = Form(
    "full", 3000, 4, 8, 0.2, 2.0, 5, 200, 5, True, 300.0,
    diskfull_s=60.0, soak_s=240.0, soak_warmup_s=60.0, soak_rate=300, soak_kinds=KINDS,
    retention_soak_s=180.0,
    workflows=200, workflow_step_s=0.5,
)  # fmt: skip


def storm(run: Run, result: Result, form: Form) -> None:
    """kill -9 a random worker every ``kill_every_s`` and start a new one, until all are done.
    Duplicates may come only from the jobs the killed workers held (running or finished but
    not yet recorded)."""
    run.enqueue("record", range(form.storm_jobs), sleep_s=form.storm_sleep_s)
    procs = [run.start_worker(form.storm_concurrency) for _ in range(form.storm_workers)]
    rng = random.Random()
    kills: list[tuple[float, int, list[int], int]] = []  # time, pid, jobs it held, replacement
    n = form.storm_jobs
    run.wait_until(lambda: run.count("S") > 0, form.timeout_s, "the first job to start")
    deadline = time.monotonic() + form.timeout_s
    leases = LeaseWatch(run)
    while run.finished() < n and time.monotonic() < deadline:
        leases.sleep(form.kill_every_s)  # the storm's rhythm: this pause is the fault
        if run.finished() >= n:
            break
        k = rng.randrange(len(procs))
        victim = procs[k]
        t = faults.kill9(victim.pid)
        victim.wait()
        held = run.held_by(victim.pid)
        leases.watch(t, victim.pid, held)
        procs[k] = run.start_worker(form.storm_concurrency)
        kills.append((t, victim.pid, held, procs[k].pid))
    result.worst_lease_recovery_s = leases.finish(form.timeout_s)
    run.wait_all_final(form.timeout_s)
    for p in procs:
        run.stop_cleanly(p, result)
    run.tally(result)
    events = run.events()
    # Recovered: the replacement worker is running jobs again.
    restarts = [
        min((e.t for e in events if e.kind == "S" and e.pid == new), default=None)
        for _, _, _, new in kills
    ]
    result.recover_s = max(
        (s - t for (t, *_), s in zip(kills, restarts, strict=True) if s), default=None
    )
    result.notes.append(f"{len(kills)} kills")
    result.expect(len(kills) >= form.min_kills, f"only {len(kills)} kills before the work ran out")
    result.expect(result.lost == 0, f"{result.lost} jobs lost")
    result.expect_twice_within({i for _, _, held, _ in kills for i in held}, "a killed worker")
    result.expect_within(
        "a lost lease recovered after", result.worst_lease_recovery_s, run.lease_recovery_bound_s
    )
    result.expect_within(
        "a replacement worker started a job after", result.recover_s, RESTART_BOUND_S
    )


def graceful(run: Run, result: Result, form: Form) -> None:
    """SIGTERM a worker holding short jobs and jobs longer than its grace. At its exit every
    job is either succeeded (finished once) or queued with its attempt given back; nothing is
    running, and a job that finished within the grace never runs again."""
    grace_s, long_s, slots = 1.5, 4.0, 6
    long_jobs = run.enqueue("record", range(3), sleep_s=long_s)
    run.enqueue("record", range(3, 3 + form.graceful_jobs), sleep_s=0.1)
    w = run.start_worker(slots, grace_s=grace_s)
    run.wait_until(
        lambda: set(run.held_by(w.pid)) >= set(long_jobs) and run.count("S") > 0,
        form.timeout_s,
        "the worker to hold the long jobs and start running",
    )
    t_term = time.time()
    w.send_signal(signal.SIGTERM)
    code = w.wait(timeout=grace_s + 3 * long_s + 20)
    t_exit = time.time()
    at_exit = {i: run.get(i) for i in run.ids}
    result.recover_s = time.time() - t_exit  # every job's state was read by then
    result.expect(code == 0, f"the worker exited with {code} after SIGTERM")
    events = run.events()
    finished = {e.i for e in events if e.kind == "F"}
    given_back = []
    for i, rec in at_exit.items():
        if rec.state is JobState.SUCCEEDED:
            result.expect(i in finished, f"job {i} succeeded without finishing")
        elif rec.state is JobState.QUEUED and rec.attempt == 0:
            given_back.append(i)
        else:
            result.problems.append(f"job {i} is {rec.state} attempt {rec.attempt} at the exit")
    done_in_grace = {i for i, rec in at_exit.items() if rec.state is JobState.SUCCEEDED}
    started = {e.i for e in events if e.kind == "S" and e.t < t_term}
    result.expect(
        bool(started & set(given_back)), "no job that had started was given back at the exit"
    )
    late = sorted(
        {e.i for e in events if e.kind == "S" and e.pid == w.pid and e.t > t_term + grace_s}
    )
    result.expect(not late, f"jobs {late[:5]} started after the grace ended (already given back)")
    result.notes.append(
        f"exit {t_exit - t_term:.1f}s after SIGTERM (grace {grace_s}s); {len(done_in_grace)} "
        f"finished in the grace, {len(set(given_back) & started)} started ones given back"
    )
    drain = run.start_worker(slots, extra=["--burst"])
    drain.wait(timeout=form.timeout_s)
    run.wait_all_final(form.timeout_s)
    run.tally(result)
    result.expect(result.dead == 0, f"{result.dead} jobs dead")
    result.expect(result.lost == 0, f"{result.lost} jobs lost")
    # Only a job given back (started by the stopped worker, released unfinished at the exit)
    # may start again. Its start may fall inside the grace: a job claimed just before the
    # SIGTERM reaches its thread late on a loaded machine (``late`` bounds that by the grace).
    started_by_w = {e.i for e in events if e.kind == "S" and e.pid == w.pid}
    result.expect_twice_within(set(given_back) & started_by_w, "the stopped worker (given back)")
    result.expect_within(
        "reading every job back after the exit took", result.recover_s, GRACEFUL_READ_BOUND_S
    )


def poison(run: Run, result: Result, form: Form) -> None:
    """A task that ``os._exit``s its process every time, under ``--processes 2`` supervision,
    while other jobs keep arriving: it ends dead after exactly max_attempts starts."""
    run.enqueue("poison", [0])
    sup = run.start_worker(4, extra=["--processes", "2"])
    poison_id = run.ids[0]
    i = 1

    def poison_dead() -> bool:
        return run.app.run_sync(lambda b: b.get(poison_id)).state.final  # type: ignore[union-attr]

    deadline = time.monotonic() + form.timeout_s
    leases, seen = LeaseWatch(run), 0
    while not poison_dead():  # a trickle of other work for as long as the poison lives
        if time.monotonic() > deadline:
            raise Failure("the poison job never ended")
        run.enqueue("record", range(i, i + 4), sleep_s=0.05)
        i += 4
        poison_starts = [e for e in run.events() if e.kind == "S" and e.i == 0]
        for e in poison_starts[seen:]:
            leases.watch(e.t, e.pid, [0])
        seen = len(poison_starts)
        leases.sleep(0.25)  # the producer's pace, not a wait for a condition
    result.worst_lease_recovery_s = leases.finish(form.timeout_s)
    run.wait_all_final(form.timeout_s)
    run.stop_cleanly(sup, result, "the supervisor")
    run.tally(result, may_die=[0])
    rec = run.get(0)
    events = run.events()
    deaths = sorted(e.t for e in events if e.kind == "S" and e.i == 0)
    result.expect(rec.state is JobState.DEAD, f"the poison job ended {rec.state}, not dead")
    result.expect(
        rec.attempt == POISON_ATTEMPTS and len(deaths) == POISON_ATTEMPTS,
        f"the poison job ended after attempt {rec.attempt} and {len(deaths)} starts, "
        f"not exactly {POISON_ATTEMPTS}",
    )
    meanwhile = sum(
        1 for e in events if e.kind == "F" and e.i != 0 and deaths[0] < e.t < deaths[-1]
    )
    result.expect(meanwhile > 0, "no other job finished while the poison job was alive")
    result.notes.append(f"{meanwhile} other jobs finished while the poison job lived")
    result.recover_s = _worst_restart(events, deaths)
    result.expect(result.lost == 0, f"{result.lost} jobs lost")
    result.expect(result.dead == 1, f"{result.dead} jobs dead; only the poison job should be")
    # A dying process takes with it what it had started (finished bodies whose outcomes were
    # not yet recorded included); nothing else may run twice.
    result.expect_twice_within(_held_at_death(events), "a dying process")
    result.expect_within(
        "a lost lease recovered after", result.worst_lease_recovery_s, run.lease_recovery_bound_s
    )
    result.expect_within(
        "a replacement process started a job after", result.recover_s, RESTART_BOUND_S
    )


def stale_lease(run: Run, result: Result, form: Form) -> None:
    """Freeze worker A past its lease while it holds jobs; B re-runs them; A is resumed while
    B is still running them, so A's late completions arrive first and must be refused."""
    n, job_s = 4, 3.0
    a = run.start_worker(n)
    run.enqueue("record", range(n), sleep_s=job_s)
    run.wait_until(
        lambda: len(run.held_by(a.pid)) == n and run.count("S", a.pid) > 0,
        form.timeout_s,
        "worker A to hold every job and start running",
    )
    t_stop = faults.freeze(a.pid)
    held = run.held_by(a.pid)
    leases = LeaseWatch(run)
    leases.watch(t_stop, a.pid, held)
    b = run.start_worker(n)
    result.worst_lease_recovery_s = leases.finish(form.timeout_s)
    run.wait_until(
        lambda: {e.i for e in run.events() if e.kind == "S" and e.pid == b.pid} >= set(held),
        form.timeout_s,
        "worker B to re-run the frozen worker's jobs",
    )
    frozen_s = time.time() - t_stop
    if frozen_s < run.lease_s:
        time.sleep(run.lease_s - frozen_s)  # the freeze itself must outlast the lease
    t_cont = faults.thaw(a.pid)
    run.enqueue("record", range(n, n + 8), sleep_s=0.05)
    run.wait_all_final(form.timeout_s)
    run.stop_cleanly(a, result, "worker A")
    run.stop_cleanly(b, result, "worker B")
    by_i = run.tally(result)
    result.expect(result.dead == 0, f"{result.dead} jobs dead")
    events = run.events()
    a_started = {e.i for e in events if e.kind == "S" and e.pid == a.pid and e.t < t_stop}
    late = [e for e in events if e.kind == "F" and e.pid == a.pid and e.i in held]
    b_done = {e.i: e.t for e in events if e.kind == "F" and e.pid == b.pid}
    early = sum(1 for e in late if e.t < b_done.get(e.i, float("inf")))
    for i in held:
        rec = by_i[i]
        result.expect(
            rec.state is JobState.SUCCEEDED and rec.attempt == 2 and result_pid(rec) == b.pid,
            f"job {i}: {rec.state}, attempt {rec.attempt}, result from pid {result_pid(rec)} "
            f"(frozen A={a.pid}, B={b.pid})",
        )
        starts = {e.pid for e in events if e.kind == "S" and e.i == i}
        want = {a.pid, b.pid} if i in a_started else {b.pid}
        result.expect(starts <= want | {a.pid} and b.pid in starts, f"job {i} started by {starts}")
    result.expect(bool(a_started & set(held)), "the frozen worker was running none of its jobs")
    result.notes.append(
        f"frozen {t_cont - t_stop:.1f}s (lease {run.lease_s}s) holding {len(held)} jobs, "
        f"{len(a_started & set(held))} of them started; after SIGCONT A finished {len(late)}, "
        f"{early} before B did; every late completion refused"
    )
    after = sorted(i for i in held if i not in a_started and i in {e.i for e in late})
    if after:
        result.notes.append(f"A started jobs {after} after SIGCONT, though their lease was lost")
    a_new = [e.t for e in events if e.kind == "S" and e.pid == a.pid and e.t > t_cont]
    result.recover_s = min(a_new) - t_cont if a_new else None
    result.expect(result.lost == 0, f"{result.lost} jobs lost")
    result.expect_twice_within(held, "the frozen worker")
    result.expect_within(
        "a lost lease recovered after", result.worst_lease_recovery_s, run.lease_recovery_bound_s
    )
    result.expect_within(
        "worker A started new work after SIGCONT", result.recover_s, RESTART_BOUND_S
    )


def _held_at_death(events: list[Event]) -> set[int]:
    """The poison job, and the jobs each process it killed had started (threads of its own
    may still write a start line in the moment ``os._exit`` takes) and not finished more than
    ``OUTCOME_LAG_S`` before its death (an outcome still on its way)."""
    death = {e.pid: e.t for e in events if e.kind == "S" and e.i == 0}
    finished = {(e.pid, e.i): e.t for e in events if e.kind == "F"}
    return {0} | {
        e.i
        for e in events
        if e.kind == "S"
        and e.pid in death
        and finished.get((e.pid, e.i), death[e.pid]) > death[e.pid] - OUTCOME_LAG_S
    }


def _worst_restart(events: list[Event], deaths: list[float]) -> float | None:
    """The longest wait, after a death, until a process not seen before it started a job (the
    supervisor's replacement at work)."""
    worst: float | None = None
    for d in deaths:
        known = {e.pid for e in events if e.t <= d}
        later = [e.t - d for e in events if e.kind == "S" and e.t > d and e.pid not in known]
        if later:
            worst = max(worst or 0.0, min(later))
    return worst
