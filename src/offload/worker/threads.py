"""The thread pool that runs sync tasks, built for many tiny jobs.

``concurrent.futures.ThreadPoolExecutor`` wakes the event loop once per finished job (one
``call_soon_threadsafe`` each, a write to the loop's self-pipe). Here finished jobs are queued
and the loop is woken once per burst: while one wake-up is pending, further results just join
the queue. Threads start lazily, up to ``max_threads`` (one per worker slot): a new thread
starts whenever more jobs are waiting in the queue than there are idle threads to take them,
so a burst of jobs spreads over the threads instead of queueing behind one.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

_Item = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", contextvars.Context]


class TaskThreads:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_threads: int, name: str) -> None:
        self._loop = loop
        self._max = max_threads
        self._name = name
        self._work: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._idle = 0  # threads waiting for an item
        self._queued = 0  # items put and not yet taken
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a pool thread (in a copy of the caller's context)."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        with self._lock:
            self._queued += 1
            start = self._queued > self._idle and len(self._threads) < self._max
            if start:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
        if start:
            thread.start()
        self._work.put((fn, args, fut, contextvars.copy_context()))
        return fut

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._work.get()
            with self._lock:
                self._idle -= 1
                if item is not None:
                    self._queued -= 1
            if item is None:
                return
            fn, args, fut, ctx = item
            if fut.cancelled():  # its job timed out or was stopped while it waited here
                continue
            try:
                result: tuple[asyncio.Future[Any], bool, Any] = (fut, True, ctx.run(fn, *args))
            except BaseException as exc:  # handed to the awaiting job, which decides
                result = (fut, False, _settable(exc))
            self._done.append(result)
            with self._lock:
                wake = not self._wake_pending
                self._wake_pending = True
            if wake:
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return

    def _deliver(self) -> None:
        with self._lock:
            self._wake_pending = False
        while self._done:
            fut, ok, value = self._done.popleft()
            if fut.done():
                continue  # timed out or stopped: the thread's late result is dropped
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def shutdown(self, *, wait: bool, timeout_s: float | None = None) -> None:
        """Stop every thread after its current job; ``wait`` joins them, for at most
        ``timeout_s`` in all. Items still queued are skipped: their futures were cancelled.

        A sync function cannot be interrupted, so a thread still running past the timeout is
        left behind (threads are daemons); its job was already handed back by the worker.
        """
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        if not wait:
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _settable(exc: BaseException) -> BaseException:
    """An exception a future accepts: asyncio refuses StopIteration (a bare ``next()`` on an
    exhausted iterator in a task), which would leave its job waiting forever."""
    if isinstance(exc, StopIteration):
        err = RuntimeError(f"the task raised StopIteration: {exc!r}")
        err.__cause__ = exc
        return err
    return exc
