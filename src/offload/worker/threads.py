"""The thread pool that runs sync tasks, built for many tiny jobs.

``concurrent.futures.ThreadPoolExecutor`` wakes the event loop once per finished job (one
``call_soon_threadsafe`` each, a write to the loop's self-pipe). Here finished jobs are queued
and the loop is woken once per burst: while one wake-up is pending, further results just join
the queue. Threads start lazily, up to ``max_threads`` (one per worker slot).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

_Item = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", contextvars.Context]


class ThreadRunner:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_threads: int, name: str) -> None:
        self._loop = loop
        self._max = max_threads
        self._name = name
        self._work: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._idle = 0
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a pool thread (in a copy of the caller's context)."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        with self._lock:
            start = self._idle == 0 and len(self._threads) < self._max
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
            if item is None:
                return
            fn, args, fut, ctx = item
            try:
                result: tuple[asyncio.Future[Any], bool, Any] = (fut, True, ctx.run(fn, *args))
            except BaseException as exc:  # handed to the awaiting job, which decides
                result = (fut, False, exc)
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
            if fut.cancelled():
                continue  # timed out or stopped: the thread's late result is dropped
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def shutdown(self, *, wait: bool) -> None:
        """Stop every thread after its current job; ``wait`` joins them."""
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()
