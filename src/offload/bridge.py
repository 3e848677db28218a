"""The one sync bridge: a long-lived event loop in a daemon thread.

Sync callers (a Flask view, a script, a sync task in a worker thread) run the async core
through it instead of through duplicated ``*_sync`` methods. Each App owns one Bridge; the loop
thread starts on first use and stops on :meth:`Bridge.stop`, or at interpreter exit.

A script that enqueues and ends never calls ``stop``, and the loop's thread is a daemon: left
alone, the interpreter would tear it down with the backend's connections and tasks still open
("Task was destroyed but it is pending!"). So a running bridge is registered with
:mod:`atexit` (the only registry it uses; :meth:`stop` takes it out again): at exit it runs the
owner's ``at_exit`` coroutine on its loop (the App closes its backend there) and then stops the
loop the way :func:`asyncio.run` ends one.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("offload.bridge")

# Interpreter exit waits this long for the owner's clean-up; a backend that hangs on close
# must not hang the process.
_EXIT_TIMEOUT_S = 10.0


class Bridge:
    def __init__(
        self,
        name: str = "offload-bridge",
        *,
        at_exit: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """``at_exit`` makes the coroutine run on the loop at interpreter exit, if the loop is
        still running then (the owner's clean-up: closing what lives on the loop)."""
        self._name = name
        self._at_exit = at_exit
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def loop(self) -> asyncio.AbstractEventLoop:
        """The bridge's loop, started on first use."""
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                started = threading.Event()
                thread = threading.Thread(
                    target=self._run, args=(loop, started), name=self._name, daemon=True
                )
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
                atexit.unregister(self._exit)  # at most once, however often it restarts
                atexit.register(self._exit)
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            _finish(loop)

    def run(self, coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop | None = None) -> T:
        """Run ``coro`` on ``loop`` (the bridge's own by default) and wait for its result."""
        target = loop if loop is not None else self.loop()
        return asyncio.run_coroutine_threadsafe(coro, target).result()

    def stop(self) -> None:
        """Stop the loop thread and wait for it. Idempotent."""
        atexit.unregister(self._exit)
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def _exit(self) -> None:
        """The atexit hook: the owner's clean-up on the loop, then a clean stop."""
        loop = self._loop
        if self._at_exit is not None and loop is not None and self.running:
            fut = asyncio.run_coroutine_threadsafe(self._at_exit(), loop)
            try:
                fut.result(timeout=_EXIT_TIMEOUT_S)
            except concurrent.futures.TimeoutError:
                fut.cancel()
                log.warning("closing at exit took over %.0f s; stopped anyway", _EXIT_TIMEOUT_S)
            except Exception:
                log.warning("closing at exit failed", exc_info=True)
        self.stop()


def _finish(loop: asyncio.AbstractEventLoop) -> None:
    """End a stopped loop as :func:`asyncio.run` does: cancel what is left and let it unwind
    (a task destroyed while pending is what the interpreter complains about), then close."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
