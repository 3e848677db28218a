"""Enqueue N no-op jobs in bulk, then drain them with one (or more) worker processes.

    python benchmarks/drain.py --url sqlite:///tmp/bench.db [--jobs 20000] [--task noop]

Prints enqueue jobs/s (bulk, in batches) and drain jobs/s. The drain rate is measured from the
backend's own records: jobs / (last finished_at - first started_at), so worker start-up time is
not counted. The queue is a fresh, uniquely named one; the jobs are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_app import anoop, app, noop  # noqa: E402
from offload.job import JobFilter, JobState  # noqa: E402


async def enqueue_all(n: int, task_name: str, queue: str, batch: int) -> float:
    task = noop if task_name == "noop" else anoop
    bound = task.options(queue=queue)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        await app.aenqueue_many([bound.prepare(i) for i in range(start, min(n, start + batch))])
    return n / (time.perf_counter() - t0)


async def wait_drained(n: int, queue: str, timeout_s: float, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = await app.call(lambda b: b.counts())
        done = counts.get(queue, {}).get(JobState.SUCCEEDED, 0)
        if done >= n:
            return
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"drain did not finish within {timeout_s}s")


async def measured_rate(queue: str, since: float = 0.0) -> tuple[float, int]:
    """Jobs per second over the succeeded jobs of ``queue`` that started at ``since`` (epoch
    seconds) or later: count / (last finished_at - first started_at)."""
    first, last, count, cursor = float("inf"), 0.0, 0, None
    while True:
        flt = JobFilter(queue=queue, state=JobState.SUCCEEDED, limit=1000, cursor=cursor)
        page = await app.call(lambda b, f=flt: b.list_jobs(f))  # type: ignore[misc]
        for j in page.jobs:
            if (j.started_at or 0.0) < since:
                continue
            count += 1
            first = min(first, j.started_at or first)
            last = max(last, j.finished_at or last)
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    return count / max(last - first, 1e-9), count


async def start_worker(
    url: str, queue: str, concurrency: int, processes: int = 1
) -> asyncio.subprocess.Process:
    """``offload worker`` on ``queue`` in a process of its own, running this tree's code."""
    cmd = [
        sys.executable,
        "-m",
        "offload",
        "--url",
        url,
        "worker",
        "benchmarks.bench_app:app",
        "--queues",
        queue,
        "--concurrency",
        str(concurrency),
        "--processes",
        str(processes),
        "--log-level",
        "warning",
    ]
    # src too: from a checkout other than the one the venv installed, run this tree's code
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    return await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env)


async def stop_worker(worker: asyncio.subprocess.Process) -> None:
    worker.terminate()
    await asyncio.wait_for(worker.wait(), 60)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="sqlite:///" + str(ROOT / "benchmarks" / ".drain.db"))
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--task", choices=["noop", "anoop"], default="noop")
    p.add_argument("--batch", type=int, default=5_000, help="jobs per enqueue_many call")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args()
    app.use_url(args.url)
    if not app.backend.capabilities.cross_process:
        sys.exit(f"{args.url} keeps jobs inside one process; a worker process cannot drain it")
    queue = f"bench_{uuid.uuid4().hex[:8]}"
    await app.open()
    enq_rate = await enqueue_all(args.jobs, args.task, queue, args.batch)
    worker = await start_worker(args.url, queue, args.concurrency, args.processes)
    try:
        await wait_drained(args.jobs, queue, args.timeout)
    finally:
        await stop_worker(worker)
    rate, count = await measured_rate(queue)
    await app.call(lambda b: b.purge([JobState.SUCCEEDED], queue=queue))
    await app.close()
    print(f"backend        {args.url.split('?')[0]}")
    print(f"task           {args.task} ({'sync, thread pool' if args.task == 'noop' else 'async'})")
    print(f"enqueue (bulk) {enq_rate:10,.0f} jobs/s  ({args.jobs} jobs, batches of {args.batch})")
    print(
        f"drain          {rate:10,.0f} jobs/s  ({count} jobs, {args.processes} process(es), "
        f"concurrency {args.concurrency})"
    )


if __name__ == "__main__":
    asyncio.run(main())
