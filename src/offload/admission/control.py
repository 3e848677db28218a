"""The admission middleware: bounded concurrency, a bounded wait queue, shedding.

``AdmissionControl`` wraps an ASGI app (Starlette, FastAPI, Django, offload's own server) and
lets at most a limited number of HTTP requests run inside it; the rest wait in FIFO order in a
bounded queue, and those that cannot be served in time are answered ``503`` with
``Retry-After`` instead of making every request slow. See ``docs/admission.md``.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Literal

from offload.admission.limit import AdaptiveLimit
from offload.admission.listener import Listener, expects_continue
from offload.admission.metrics import AdmissionStats, families, register
from offload.admission.rules import PriorityRule
from offload.admission.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

Overflow = Literal["drop_oldest", "reject_new"]

# Upper bounds (seconds) of the wait-time histogram: from "admitted at once" to "waited long".
WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SHED_REASONS = ("overflow", "timeout", "disconnect")

# How a wait ended. A granted waiter owns a slot that the granter already counted.
_GRANTED, _OVERFLOW, _TIMEOUT, _DISCONNECT = "granted", "overflow", "timeout", "disconnect"


class _Waiter:
    __slots__ = ("enqueued_at", "future", "priority", "timer")

    def __init__(self, future: asyncio.Future[str], priority: int, enqueued_at: float) -> None:
        self.future = future
        self.priority = priority
        self.enqueued_at = enqueued_at
        self.timer: asyncio.TimerHandle | None = None


class AdmissionControl:
    """ASGI middleware: at most ``max_concurrency`` HTTP requests inside ``app`` at once.

    Contract:

    - A request is *admitted* (passed to ``app``) when a slot is free and nobody waits;
      otherwise it waits. Waiters are admitted highest priority class first, FIFO within a
      class. The request body is not read before admission (see below), so the app sees it
      whole.
    - At most ``max_queue`` requests wait. When one more arrives, one request of the lowest
      class present is shed: with ``overflow="drop_oldest"`` the one that has waited longest,
      with ``"reject_new"`` the newest (the newcomer itself when it is in that class). A
      newcomer that ranks below every waiter is the one shed.
    - A waiter still waiting after ``queue_timeout`` seconds is shed rather than run late.
    - Shed requests get ``503`` with ``Retry-After: <retry_after>``; they never reach ``app``.
    - A client that disconnects while waiting leaves the queue at once, gets no answer, and
      never reaches ``app``. To notice that, the middleware listens on ``receive`` while the
      request waits; body chunks that arrive meanwhile (up to 64 KiB) are held and replayed
      to the app in order. A request sent with ``Expect: 100-continue`` is not listened to,
      so its body is not invited before admission.
    - The slot is released once, when the final response body message has been sent or when
      ``app`` returns or raises (cancellation included), whichever comes first.
    - ``bypass_paths`` (exact paths, e.g. health checks), WebSocket and lifespan scopes go
      straight to ``app``, uncounted by the limit.
    - ``max_concurrency`` is an int, or an :class:`AdaptiveLimit` that sets the limit from
      observed latency (one instance per middleware).

    Metrics are kept as plain counters (``stats``) and exported at scrape time to ``registry``
    as ``<namespace>_in_flight``, ``_waiting``, ``_limit``, ``_admitted_total``,
    ``_shed_total{reason}`` and ``_wait_seconds`` (histogram of admitted requests' wait).
    Without a registry, a private ``CollectorRegistry`` is made (``self.registry``), or none if
    prometheus_client is not installed. The middleware must be used from one event loop.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrency: int | AdaptiveLimit,
        max_queue: int,
        overflow: Overflow = "drop_oldest",
        queue_timeout: float | None = None,
        retry_after: int = 1,
        priority_rules: Sequence[PriorityRule] = (),
        bypass_paths: Collection[str] = (),
        registry: CollectorRegistry | None = None,
        metrics_namespace: str = "offload_admission",
    ) -> None:
        self._adaptive: AdaptiveLimit | None = None
        if isinstance(max_concurrency, AdaptiveLimit):
            self._adaptive = max_concurrency
            self._limit = max_concurrency.limit
        elif isinstance(max_concurrency, int) and not isinstance(max_concurrency, bool):
            if max_concurrency < 1:
                raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
            self._limit = max_concurrency
        else:
            raise ValueError(
                f"max_concurrency must be an int or AdaptiveLimit: {max_concurrency!r}"
            )
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue!r}")
        if overflow not in ("drop_oldest", "reject_new"):
            raise ValueError(f"overflow must be 'drop_oldest' or 'reject_new', got {overflow!r}")
        if queue_timeout is not None and not queue_timeout > 0:
            raise ValueError(f"queue_timeout must be > 0 seconds or None, got {queue_timeout!r}")
        if retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 seconds, got {retry_after!r}")
        self.app = app
        self._max_queue = max_queue
        self._drop_oldest = overflow == "drop_oldest"
        self._queue_timeout = queue_timeout
        self._retry_after = str(retry_after).encode("ascii")
        self._rules = tuple(priority_rules)
        self._bypass = frozenset(bypass_paths)
        # One FIFO per class, highest class first; a dict keeps order and removes in O(1).
        classes = sorted({0, *(rule.priority for rule in self._rules)}, reverse=True)
        self._queues: dict[int, dict[_Waiter, None]] = {p: {} for p in classes}
        self._in_flight = 0
        self._waiting = 0
        self._admitted = 0
        self._bypassed = 0
        self._shed = dict.fromkeys(SHED_REASONS, 0)
        self._wait_counts = [0] * (len(WAIT_BUCKETS_S) + 1)
        self._wait_sum_s = 0.0
        self.registry = register(
            registry,
            lambda: families(
                metrics_namespace, self.stats, WAIT_BUCKETS_S, self._wait_counts, self._wait_sum_s
            ),
        )

    @property
    def stats(self) -> AdmissionStats:
        """Current counters; ``in_flight`` and ``waiting`` are 0 when nothing is under way."""
        return AdmissionStats(
            limit=self._limit,
            in_flight=self._in_flight,
            waiting=self._waiting,
            admitted=self._admitted,
            bypassed=self._bypassed,
            shed=dict(self._shed),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._bypass:
            if scope["type"] == "http":
                self._bypassed += 1
            await self.app(scope, receive, send)
            return
        if self._waiting == 0 and self._in_flight < self._limit:
            # The hot path: no queue, no task, no clock unless the limit is adaptive.
            self._in_flight += 1
            self._admitted += 1
            self._wait_counts[0] += 1
            await self._run(scope, receive, send, None)
            return
        priority = self._classify(scope) if self._rules else 0
        verdict, listener = await self._wait(scope, receive, priority)
        if verdict == _GRANTED:
            await self._run(scope, listener.replay if listener else receive, send, listener)
        elif verdict != _DISCONNECT:
            await self._answer_503(send)

    def _classify(self, scope: Scope) -> int:
        for rule in self._rules:
            if rule.matches(scope):
                return rule.priority
        return 0

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, listener: Listener | None
    ) -> None:
        started = time.perf_counter() if self._adaptive is not None else 0.0
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release(started)

        async def send_and_release(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                try:
                    await send(message)
                finally:
                    release()
            else:
                await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()
            if listener is not None:
                await listener.close()

    def _release(self, started: float | None) -> None:
        """Give back one slot; ``started`` (perf_counter) times the request for the limit."""
        self._in_flight -= 1
        if self._adaptive is not None and started is not None:
            saturated = self._waiting > 0 or self._in_flight + 1 >= self._limit
            self._adaptive.on_sample(time.perf_counter() - started, saturated=saturated)
            self._limit = self._adaptive.limit
        self._grant()

    def _grant(self) -> None:
        """Hand free slots to waiters, highest class first, oldest first."""
        while self._waiting and self._in_flight < self._limit:
            for queue in self._queues.values():
                if queue:
                    waiter = next(iter(queue))
                    break
            self._dequeue(waiter)
            if waiter.future.done():  # cancelled, its task not yet run to leave the queue
                continue
            waited = time.monotonic() - waiter.enqueued_at
            if self._queue_timeout is not None and waited > self._queue_timeout:
                # Past its deadline, its timer not yet run (the loop was busy or stalled): it
                # would run late, which the deadline exists to prevent.
                self._shed[_TIMEOUT] += 1
                waiter.future.set_result(_TIMEOUT)
                continue
            self._in_flight += 1
            self._admitted += 1
            self._wait_counts[bisect.bisect_left(WAIT_BUCKETS_S, waited)] += 1
            self._wait_sum_s += waited
            waiter.future.set_result(_GRANTED)

    def _dequeue(self, waiter: _Waiter) -> bool:
        """Take ``waiter`` out of its queue; False if it was not there (any more)."""
        queue = self._queues[waiter.priority]
        if waiter not in queue:
            return False
        del queue[waiter]
        self._waiting -= 1
        if waiter.timer is not None:
            waiter.timer.cancel()
        return True

    def _shed_waiter(self, waiter: _Waiter, reason: str) -> None:
        """Take a waiter out of the queue with ``reason``, unless its wait already ended."""
        if not self._dequeue(waiter) or waiter.future.done():
            return
        self._shed[reason] += 1
        waiter.future.set_result(reason)

    def _victim(self, priority: int) -> _Waiter | None:
        """The waiter to shed for a newcomer of ``priority``; None means the newcomer."""
        for cls in reversed(self._queues):
            queue = self._queues[cls]
            if cls > priority:
                return None
            if queue:
                if self._drop_oldest:
                    return next(iter(queue))
                return None if cls == priority else next(reversed(queue))
        return None

    async def _wait(
        self, scope: Scope, receive: Receive, priority: int
    ) -> tuple[str, Listener | None]:
        """Queue the request until a verdict; a granted request owns a slot on return."""
        if self._waiting >= self._max_queue:
            victim = self._victim(priority)
            if victim is None:
                self._shed[_OVERFLOW] += 1
                return _OVERFLOW, None
            self._shed_waiter(victim, _OVERFLOW)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), priority, time.monotonic())
        self._queues[priority][waiter] = None
        self._waiting += 1
        if self._queue_timeout is not None:
            waiter.timer = loop.call_later(self._queue_timeout, self._shed_waiter, waiter, _TIMEOUT)
        listener = (
            None
            if expects_continue(scope)
            else Listener(receive, lambda: self._shed_waiter(waiter, _DISCONNECT))
        )
        try:
            verdict = await waiter.future
        except BaseException:
            # Cancelled while waiting: leave the queue, or give back a slot granted just now.
            future = waiter.future
            if future.done() and not future.cancelled() and future.result() == _GRANTED:
                self._release(None)
            else:
                future.cancel()
                self._dequeue(waiter)
            if listener is not None:
                await listener.close()
            raise
        if listener is not None:
            if verdict == _GRANTED:
                listener.admit()
            else:
                await listener.close()
                listener = None
        return verdict, listener

    async def _answer_503(self, send: Send) -> None:
        body = b"Service overloaded; retry later.\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"retry-after", self._retry_after),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
