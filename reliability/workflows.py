"""The workflow storm: workers killed -9 while chains of steps run. Every workflow must end
succeeded with every step's result (each step's result is the list of the steps before it and
itself, so the last one names all five, in order); a step may run twice only if a killed
worker held it, so the completion that released the next step never released it twice."""

from __future__ import annotations

import random
import time

import msgspec

import offload
from offload.workflow.canvas import build
from reliability import faults
from reliability.harness import RESTART_BOUND_S, LeaseWatch, Result, Run
from reliability.scenarios import Form

WORKFLOW_STEPS = 5


def workflow_storm(kind: str, run: Run, result: Result, form: Form) -> None:
    if not run.app.backend.capabilities.workflows:
        result.skipped = "backend declares workflows=False"
        return
    step = run.app.get_task("wf_step")
    ledger = str(run.ledger)
    expected: dict[str, list[int]] = {}
    for w in range(form.workflows):
        first = w * WORKFLOW_STEPS
        ids = list(range(first, first + WORKFLOW_STEPS))
        shape = offload.chain(
            step.s([], ids[0], ledger, form.workflow_step_s),
            *(step.s(i, ledger, form.workflow_step_s) for i in ids[1:]),
        )
        wf = run.app.enqueue_workflow(build(shape))
        expected[wf.id] = ids
        for k, i in enumerate(ids):  # a step's job id is known before it exists
            run.ids[i] = f"{wf.id}.{k}"
    procs = [run.start_worker(form.storm_concurrency) for _ in range(form.storm_workers)]
    kills: list[tuple[float, int, list[int], int]] = []
    rng = random.Random()
    total = len(run.ids)
    run.wait_until(lambda: run.count("S") > 0, form.timeout_s, "the first step to start")
    deadline = time.monotonic() + form.timeout_s
    leases = LeaseWatch(run)
    while run.finished() < total and time.monotonic() < deadline:
        leases.sleep(form.kill_every_s)  # the storm's rhythm: this pause is the fault
        if run.finished() >= total:
            break
        k = rng.randrange(len(procs))
        t = faults.kill9(procs[k].pid)
        procs[k].wait()
        held = run.held_by(procs[k].pid)
        leases.watch(t, procs[k].pid, held)
        victim = procs[k].pid
        procs[k] = run.start_worker(form.storm_concurrency)
        kills.append((t, victim, held, procs[k].pid))
    result.worst_lease_recovery_s = leases.finish(form.timeout_s)
    run.wait_all_final(form.timeout_s)
    for p in procs:
        run.stop_cleanly(p, result)
    run.tally(result)
    _check_results(run, result, expected)
    events = run.events()
    restarts = [
        min((e.t for e in events if e.kind == "S" and e.pid == new), default=None)
        for *_, new in kills
    ]
    result.recover_s = max(
        (s - t for (t, *_), s in zip(kills, restarts, strict=True) if s), default=None
    )
    result.notes.append(f"{len(kills)} kills, {len(expected)} workflows of {WORKFLOW_STEPS}")
    result.expect(len(kills) >= form.min_kills, f"only {len(kills)} kills before the work ran out")
    result.expect(result.lost == 0, f"{result.lost} steps lost")
    result.expect_twice_within({i for _, _, held, _ in kills for i in held}, "a killed worker")
    result.expect_within(
        "a lost lease recovered after", result.worst_lease_recovery_s, run.lease_recovery_bound_s
    )
    result.expect_within(
        "a replacement worker started a step after", result.recover_s, RESTART_BOUND_S
    )


def _check_results(run: Run, result: Result, expected: dict[str, list[int]]) -> None:
    """Every workflow succeeded, and each step's result is exactly the steps up to it."""
    wrong = []
    for wf_id, ids in expected.items():
        view = run.app.get_workflow(wf_id)
        results = [
            msgspec.json.decode(bytes(s.result)) if s.result is not None else None
            for s in view.steps
        ]
        if view.state != "succeeded" or results != [ids[: k + 1] for k in range(len(ids))]:
            wrong.append((wf_id, view.state))
    result.lost += len(wrong)
    result.expect(not wrong, f"{len(wrong)} workflows did not end with every result: {wrong[:3]}")
