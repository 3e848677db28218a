"""The worker's thread pool (offload.worker.threads.TaskThreads)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from offload.worker.threads import TaskThreads


async def test_a_burst_spreads_over_threads() -> None:
    # Four jobs submitted at once must run at once: each waits at a barrier for the others,
    # so if the burst queued behind fewer threads the barrier would break. One thread is
    # already idle when the burst comes (the case that once queued it all on that thread).
    runner = TaskThreads(asyncio.get_running_loop(), 4, "t")
    barrier = threading.Barrier(4, timeout=10)
    try:
        await runner.submit(int)
        for _ in range(1000):
            if runner._idle == 1:
                break
            await asyncio.sleep(0.001)
        futs = [runner.submit(barrier.wait) for _ in range(4)]
        assert sorted(await asyncio.gather(*futs)) == [0, 1, 2, 3]
    finally:
        runner.shutdown(wait=True)


async def test_never_more_threads_than_the_limit() -> None:
    runner = TaskThreads(asyncio.get_running_loop(), 2, "t")
    seen: set[str] = set()
    lock = threading.Lock()

    def record() -> None:
        with lock:
            seen.add(threading.current_thread().name)

    try:
        await asyncio.gather(*(runner.submit(record) for _ in range(50)))
    finally:
        runner.shutdown(wait=True)
    assert 1 <= len(seen) <= 2


async def test_a_cancelled_item_never_runs() -> None:
    runner = TaskThreads(asyncio.get_running_loop(), 1, "t")
    gate = threading.Event()
    ran: list[int] = []
    try:
        busy = runner.submit(gate.wait, 10)
        waiting = runner.submit(ran.append, 1)
        waiting.cancel()
        after = runner.submit(ran.append, 2)
        gate.set()
        assert await busy is True
        await after
        assert ran == [2]
    finally:
        runner.shutdown(wait=True)


async def test_errors_reach_the_awaiting_caller() -> None:
    runner = TaskThreads(asyncio.get_running_loop(), 1, "t")

    def boom() -> None:
        raise ValueError("no")

    try:
        with pytest.raises(ValueError, match="no"):
            await runner.submit(boom)
    finally:
        runner.shutdown(wait=True)


async def test_shutdown_does_not_wait_past_its_timeout_for_a_stuck_job() -> None:
    runner = TaskThreads(asyncio.get_running_loop(), 1, "t")
    gate = threading.Event()
    started = threading.Event()

    def stuck() -> None:
        started.set()
        gate.wait(30)

    fut = runner.submit(stuck)
    await asyncio.to_thread(started.wait, 10)
    fut.cancel()
    runner.shutdown(wait=True, timeout_s=0.1)  # returns although the job still runs
    (thread,) = [t for t in threading.enumerate() if t.name == "t-0"]
    assert thread.is_alive()
    gate.set()
    thread.join(10)
    assert not thread.is_alive()


async def test_a_task_raising_stopiteration_fails_instead_of_hanging() -> None:
    runner = TaskThreads(asyncio.get_running_loop(), 1, "t")

    def exhausted() -> int:
        return next(iter([]))

    try:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(runner.submit(exhausted), 10)
        assert await asyncio.wait_for(runner.submit(int, "7"), 10) == 7
    finally:
        runner.shutdown(wait=True)
