"""The cost of a per-key concurrency limit: drain N async no-op jobs without a limit, then N
jobs spread over K keys with at most one running per key, same backend, same run.

    python benchmarks/limits.py --url sqlite:///tmp/bench.db [--jobs 10000] [--keys 1000]

``--fair`` measures fair claims instead: N jobs without a key against N jobs spread over K
fair keys (``fair_key=``, no limit), ``--rounds`` pairs alternated in one run.

Each drain rate is measured from the backend's own records (see drain.py): jobs / (last
finished_at - first started_at). The issue's bar: the limited drain at least half the
unlimited one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_app import afair, akeyed, anoop, app  # noqa: E402
from benchmarks.drain import measured_rate, wait_drained  # noqa: E402
from offload.job import JobState, NewJob  # noqa: E402


async def drain(url: str, jobs: list[NewJob], queue: str, args: argparse.Namespace) -> float:
    for start in range(0, len(jobs), 5_000):
        await app.aenqueue_many(jobs[start : start + 5_000])
    cmd = [sys.executable, "-m", "offload", "--url", url, "worker", "benchmarks.bench_app:app"]
    cmd += ["--queues", queue, "--concurrency", str(args.concurrency)]
    cmd += ["--processes", str(args.processes), "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    worker = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env)
    try:
        await wait_drained(len(jobs), queue, args.timeout)
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 60)
    rate, _ = await measured_rate(queue)
    await app.call(lambda b: b.purge([JobState.SUCCEEDED], queue=queue))
    return rate


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="sqlite:///" + str(ROOT / "benchmarks" / ".limits.db"))
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--keys", type=int, default=1_000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--fair", action="store_true", help="fair keys instead of a per-key limit")
    p.add_argument("--rounds", type=int, default=1, help="with --fair: pairs of drains")
    args = p.parse_args()
    app.use_url(args.url)
    await app.open()
    if args.fair:
        await fair_rounds(args)
        await app.close()
        return
    tag = uuid.uuid4().hex[:8]
    plain_q, keyed_q = f"bench_{tag}", f"bench_{tag}_keyed"
    plain = [anoop.options(queue=plain_q).prepare(i) for i in range(args.jobs)]
    keyed = [akeyed.options(queue=keyed_q).prepare(i % args.keys, i) for i in range(args.jobs)]
    unlimited = await drain(args.url, plain, plain_q, args)
    limited = await drain(args.url, keyed, keyed_q, args)
    await app.close()
    print(f"backend          {args.url.split('?')[0]}")
    print(f"unlimited drain  {unlimited:10,.0f} jobs/s  ({args.jobs} jobs)")
    print(f"per-key limit 1  {limited:10,.0f} jobs/s  ({args.jobs} jobs over {args.keys} keys)")
    print(f"ratio            {limited / unlimited:10.2f}  (the bar: >= 0.5)")


async def fair_rounds(args: argparse.Namespace) -> None:
    ratios = []
    print(f"backend {args.url.split('?')[0]}: {args.jobs} jobs, no key vs {args.keys} fair keys")
    for n in range(args.rounds):
        tag = uuid.uuid4().hex[:8]
        plain_q, fair_q = f"bench_{tag}", f"bench_{tag}_fair"
        plain = [anoop.options(queue=plain_q).prepare(i) for i in range(args.jobs)]
        fair = [afair.options(queue=fair_q).prepare(i % args.keys, i) for i in range(args.jobs)]
        if n % 2:  # alternate which goes first, so a drift of the machine favours neither
            fair_rate = await drain(args.url, fair, fair_q, args)
            plain_rate = await drain(args.url, plain, plain_q, args)
        else:
            plain_rate = await drain(args.url, plain, plain_q, args)
            fair_rate = await drain(args.url, fair, fair_q, args)
        ratios.append(fair_rate / plain_rate)
        print(
            f"round {n + 1}: no key {plain_rate:9,.0f} jobs/s   fair keys {fair_rate:9,.0f} jobs/s"
            f"   ratio {fair_rate / plain_rate:5.2f}"
        )
    print(f"median ratio (fair / no key): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
