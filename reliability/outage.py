"""Backend faults: the engine's connections are cut, or the engine restarts, while workers
run and the harness keeps enqueuing. Lost 0; work resumes on its own; an enqueue during the
outage either returns (and its job then finishes) or fails with BackendUnavailable, never
anything else."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import offload
from reliability import faults
from reliability.harness import RESTART_BOUND_S, Failure, Result, Run
from reliability.scenarios import Form

SLOTS, WORKERS = 6, 2
BURST_S = 1.0  # how long Redis connections are killed over and over in one round
# After work resumed (a new job started), a worker's other connections (heartbeat, outcomes) may
# take a reconnect or two more: two heartbeats.
RECONNECT_MARGIN_S = 1.0


def injector(
    kind: str, url: str, form: Form, workdir: Path | None = None
) -> tuple[Callable[[], None] | None, str]:
    """The fault for a backend kind and its description, or None and why there is none."""
    if kind == "beanstalkd" and workdir is not None:
        return (
            lambda: faults.restart_beanstalkd(workdir)
        ), "beanstalkd killed (-9) and restarted on its binlog"
    if kind == "redis":
        return (lambda: _redis_burst(url)), "Redis CLIENT KILL of this run's connections"
    if kind == "redis_cluster":
        return (lambda: _redis_burst(url, cluster=True)), "CLIENT KILL on every cluster master"
    if kind == "rabbitmq":
        return (lambda: _rabbitmq_close(url)), "RabbitMQ close_connection of this run's"
    if kind == "postgres":
        if not form.restart_postgres:
            return None, "PostgreSQL restart not asked for in this form (it disturbs the host)"
        return _restart_postgres, "PostgreSQL restarted"
    return None, "no backend fault for SQLite (an embedded file has no connection to cut)"


def _redis_burst(url: str, cluster: bool = False) -> None:
    end = time.monotonic() + BURST_S
    while time.monotonic() < end:
        if cluster:
            faults.kill_redis_cluster_clients(url)
        else:
            faults.kill_redis_clients(url)
        time.sleep(0.05)


def _restart_postgres() -> None:
    faults.restart_postgres()


def _rabbitmq_close(url: str) -> None:
    faults.close_rabbitmq_connections(url)


def backend_fault(kind: str, run: Run, result: Result, form: Form) -> None:
    inject, what = injector(kind, run.url, form, run.workdir)
    if inject is None:
        result.skipped = what
        return
    fault_rounds(run, result, form, inject, what)


def fault_rounds(
    run: Run, result: Result, form: Form, inject: Callable[[], None], what: str
) -> None:
    """Workers drain while ``inject`` runs ``form.fault_rounds`` times and the harness keeps
    enqueuing; then the checks every backend fault shares."""
    numbers = itertools.count()
    run.enqueue("record", [next(numbers) for _ in range(100)], sleep_s=0.05)
    procs = [run.start_worker(SLOTS) for _ in range(WORKERS)]
    run.wait_registered(procs, form.timeout_s)
    run.wait_until(lambda: run.count("F") > 0, form.timeout_s, "the first job to finish")
    refused, unclean, recoveries = 0, [], []
    windows: list[tuple[float, float]] = []  # (fault began, fault ended + the margin)
    held: set[int] = set()  # what the workers held as each fault began
    for _ in range(form.fault_rounds):
        held |= {i for p in procs for i in run.held_by(p.pid)}
        t_fault = time.time()
        errors: list[BaseException] = []
        thread = threading.Thread(target=_capture(inject, errors))
        thread.start()
        while thread.is_alive():  # enqueue during the outage
            batch = [next(numbers) for _ in range(5)]
            try:
                run.enqueue("record", batch, sleep_s=0.05)
            except offload.BackendUnavailable:
                refused += len(batch)
            except Exception as exc:
                unclean.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.1)
        thread.join()
        t_end = time.time()
        if errors:
            raise Failure(f"the fault could not be injected: {errors[0]!r}")
        recoveries.append(time_to_resume(run, next(numbers), form.timeout_s))
        windows.append((t_fault, t_end + RECONNECT_MARGIN_S))
    run.enqueue("record", [next(numbers) for _ in range(50)], sleep_s=0.05)
    run.wait_all_final(form.timeout_s)
    for p in procs:
        run.stop_cleanly(p, result)
    run.tally(result)
    result.recover_s = max(recoveries)
    # Cut off: a job held when a fault began, or started while it lasted (and a margin for the
    # workers' other connections to reconnect): its outcome or heartbeat may have met a dead
    # connection. A job started later than that runs once.
    first_start: dict[int, float] = {}
    for e in run.events():
        if e.kind == "S":
            first_start.setdefault(e.i, e.t)
    cut_off = held | {i for i, t in first_start.items() if any(a <= t <= b for a, b in windows)}
    result.notes.append(
        f"{what}, {form.fault_rounds} rounds; {refused} enqueues refused with "
        "BackendUnavailable during the outage"
    )
    result.expect(not unclean, f"enqueue failed uncleanly: {unclean[:3]}")
    result.expect(result.lost == 0, f"{result.lost} jobs lost")
    result.expect_twice_within(cut_off, "a worker cut off from the backend")
    result.expect_within("work resumed after a fault in", result.recover_s, RESTART_BOUND_S)


def _capture(fn: Callable[[], None], errors: list[BaseException]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    return run


def time_to_resume(run: Run, marker: int, timeout_s: float) -> float:
    """From the end of the fault until a new job (enqueued at top priority, retried until the
    backend acknowledges it) has started in a worker: work resumed on its own."""
    t_end = time.time()

    def acknowledged() -> bool:
        run.enqueue("record", [marker], priority=9)
        return True

    run.wait_until(acknowledged, timeout_s, "the backend to take an enqueue again", 0.1)
    run.wait_until(
        lambda: any(e.kind == "S" and e.i == marker for e in run.events()),
        timeout_s,
        "work to resume after the fault",
    )
    started = min(e.t for e in run.events() if e.kind == "S" and e.i == marker)
    return started - t_end
