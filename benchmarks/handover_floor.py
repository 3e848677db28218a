"""What handing a job from an event loop to an idle thread costs, paced as jobs arrive.

A worker runs a sync task in a thread of its pool (``worker/threads.py``): the event loop puts
the job on a queue and an idle thread, blocked on that queue, wakes and runs it. Huey's
consumer thread runs the job it popped itself, with no hand-over. This times the hand-over
alone, with nothing else running: an asyncio loop puts a timestamp on a
``queue.SimpleQueue`` every ``1 / rate`` seconds and a thread blocked in ``get()`` notes how
long it took to receive it (the first tenth is a warm-up)::

    python benchmarks/handover_floor.py [--rate 200] [--count 2200]
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import threading
import time


def measure(rate: float, count: int) -> tuple[float, float]:
    """p50 and p99 (µs) of the hand-over."""
    inbox: queue.SimpleQueue[float | None] = queue.SimpleQueue()
    took: list[float] = []

    def serve() -> None:
        while (sent := inbox.get()) is not None:
            took.append(time.perf_counter() - sent)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def feed() -> None:
        for _ in range(count):
            await asyncio.sleep(1 / rate)
            inbox.put(time.perf_counter())

    asyncio.run(feed())
    inbox.put(None)
    thread.join()
    kept = sorted(took[count // 10 :])
    return kept[len(kept) // 2] * 1e6, kept[min(len(kept) - 1, int(len(kept) * 0.99))] * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--count", type=int, default=2200)
    args = p.parse_args()
    p50, p99 = measure(args.rate, args.count)
    print(f"loop -> idle thread, {args.rate:g}/s: p50 {p50:.0f} µs, p99 {p99:.0f} µs")


if __name__ == "__main__":
    main()
