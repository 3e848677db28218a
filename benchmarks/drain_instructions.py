"""The drain's cost in instructions, for comparing two source trees on a loaded machine.

Wall-clock rates move with whatever else the machine runs; an instruction count under
``valgrind --tool=callgrind`` does not (to a percent or so). This runs N no-op jobs through one
in-process burst worker on ``memory://`` (so the count is offload's own Python: hooks, context,
executor, completer, with no I/O), and, with ``--no-drain``, only the set-up and the enqueue,
which is subtracted to leave the drain::

    for tree in /path/a/src /path/b/src; do for mode in drain no-drain; do
        PYTHONHASHSEED=0 PYTHONPATH=$tree valgrind --tool=callgrind \\
            --callgrind-out-file=/dev/null python benchmarks/drain_instructions.py \\
            --jobs 2000 --kind async --$mode 2>&1 | grep Collected
    done; done

The drain's instructions are (drain - no-drain); compare the trees' as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio

import offload
from offload.worker import Worker, WorkerConfig


async def run(jobs: int, kind: str, drain: bool) -> None:
    app = offload.App("memory://")

    @app.task(name="anoop")
    async def anoop(i: int) -> None:
        return None

    @app.task(name="noop")
    def noop(i: int) -> None:
        return None

    task = anoop if kind == "async" else noop
    async with app:
        for start in range(0, jobs, 500):
            await app.aenqueue_many([task.prepare(i) for i in range(start, min(jobs, start + 500))])
        if drain:
            await Worker(app, WorkerConfig(concurrency=10, burst=True, poll_s=0.05)).run()
            done = (await app.call(lambda b: b.counts()))["default"][offload.JobState.SUCCEEDED]
            assert done == jobs, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--kind", choices=["async", "sync"], default="async")
    parser.add_argument("--drain", dest="drain", action="store_true", default=True)
    parser.add_argument("--no-drain", dest="drain", action="store_false")
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.kind, args.drain))


if __name__ == "__main__":
    main()
