"""A worker cut off from its backend for longer than its lease, through a proxy that holds
every byte (reliability.proxy), while another worker keeps its own connection.

Where the lease lives behind the cut (Redis, PostgreSQL), the other worker re-runs the jobs
the cut-off one held once their lease expires, and the cut-off worker's completions, sent
when the cut ends, are refused (the job's result is the other worker's). Where the lease
lives in a store the worker still reaches (RabbitMQ and Beanstalkd with a SQLite store: only
the broker is cut), the cut-off worker keeps its jobs. Everywhere: nothing lost, nothing run
twice but what the cut-off worker held, and it rejoins without a restart.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from reliability.harness import RESTART_BOUND_S, LeaseWatch, Result, Run, result_pid
from reliability.proxy import CutProxy, proxied
from reliability.scenarios import Form

LEASE_BEHIND_THE_CUT = ("redis", "postgres")
NOT_APPLICABLE = {
    "sqlite": "no network for SQLite (an embedded file)",
    "redis_cluster": "a cluster client follows the nodes' own addresses past a proxy",
}


def cut_off(kind: str, run: Run, result: Result, form: Form) -> None:
    if kind in NOT_APPLICABLE:
        result.skipped = NOT_APPLICABLE[kind]
        return
    parts = urlsplit(run.url)
    assert parts.hostname and parts.port
    with proxied((parts.hostname, parts.port)) as proxy:
        _cut_off(kind, run, result, form, proxy)


def _cut_off(kind: str, run: Run, result: Result, form: Form, proxy: CutProxy) -> None:
    n, job_s = 4, 2.0
    cut_s = run.lease_s * 2.5
    a = run.start_worker(n, url=proxy.rewrite(run.url))
    run.enqueue("record", range(n), sleep_s=job_s)
    run.wait_until(
        lambda: len(run.held_by(a.pid)) == n and run.count("S", a.pid) > 0,
        form.timeout_s,
        "worker A to hold every job and start running",
    )
    t_cut = time.time()
    proxy.cut()
    held = run.held_by(a.pid)
    b = run.start_worker(n)
    behind = kind in LEASE_BEHIND_THE_CUT
    leases = LeaseWatch(run)
    if behind:
        leases.watch(t_cut, a.pid, held)
    leases.sleep(max(0.0, cut_s - (time.time() - t_cut)))  # the cut itself is the fault
    t_end = time.time()
    proxy.restore()
    result.worst_lease_recovery_s = leases.finish(form.timeout_s)
    run.enqueue("record", range(n, n + 40), sleep_s=0.05)
    run.wait_all_final(form.timeout_s)
    run.stop_cleanly(a, result, "worker A")
    run.stop_cleanly(b, result, "worker B")
    by_i = run.tally(result)
    events = run.events()
    if behind:
        for i in held:
            rec = by_i[i]
            result.expect(
                result_pid(rec) == b.pid,
                f"job {i}: result from pid {result_pid(rec)} (cut-off A={a.pid}, B={b.pid}): "
                "a completion sent after the lease was lost was accepted",
            )
    a_new = [e.t for e in events if e.kind == "S" and e.pid == a.pid and e.t > t_end]
    result.recover_s = min(a_new) - t_end if a_new else None
    result.expect(bool(a_new), "worker A never started a job again after the cut ended")
    result.notes.append(
        f"cut {t_end - t_cut:.1f}s (lease {run.lease_s}s) holding {len(held)} jobs; "
        + ("the other worker re-ran them" if behind else "the lease is in the store it reaches")
    )
    result.expect(result.lost == 0, f"{result.lost} jobs lost")
    result.expect(result.dead == 0, f"{result.dead} jobs dead")
    result.expect_twice_within(held, "the cut-off worker")
    result.expect_within(
        "a lost lease recovered after", result.worst_lease_recovery_s, run.lease_recovery_bound_s
    )
    result.expect_within(
        "worker A started new work after the cut", result.recover_s, RESTART_BOUND_S
    )
