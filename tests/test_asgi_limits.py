"""AdaptiveLimit: against a model of an app with a known knee, then behind a real server."""

from __future__ import annotations

import asyncio
import random

import pytest

from offload.asgi import AdaptiveLimit, AdmissionControl, Receive, Scope, Send
from tests.test_asgi_admission import Probe, serve


def model_latency_s(limit: int, capacity: int, service_s: float, rng: random.Random) -> float:
    """An app that serves ``capacity`` requests at once: beyond that, requests queue inside it
    and latency climbs in proportion. Saturated demand keeps ``limit`` requests inside."""
    return service_s * max(1.0, limit / capacity) * rng.uniform(0.95, 1.05)


def drive(limiter: AdaptiveLimit, capacity: int, service_s: float, samples: int) -> range:
    """Feed ``samples`` requests; return the range of limits held in the last fifth, leaving
    out probe windows (which run at half the limit on purpose)."""
    rng = random.Random(7)
    seen = set()
    for n in range(samples):
        limiter.on_sample(model_latency_s(limiter.limit, capacity, service_s, rng), saturated=True)
        if n > samples * 4 // 5:
            seen.add(limiter.limit)
    settled = [limit for limit in seen if limit > max(seen) // 2]
    return range(min(settled), max(settled) + 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_limit": 0}, "min_limit"),
        ({"min_limit": 5, "max_limit": 4, "initial_limit": 5}, "max_limit"),
        ({"initial_limit": 2000}, "initial_limit"),
    ],
)
def test_bad_input_raises(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptiveLimit(**options)


@pytest.mark.parametrize("capacity", [4, 20, 200])
@pytest.mark.parametrize("initial", [1, 500])
def test_converges_at_the_knee_from_above_and_below(capacity: int, initial: int) -> None:
    limiter = AdaptiveLimit(initial_limit=initial, max_limit=1000)
    settled = drive(limiter, capacity, 0.01, samples=200_000)
    # Settles where the app just starts to queue: latency within ~25 % of the unloaded figure,
    # far from the 2x-100x a fixed limit of 2*capacity or `initial` would cost.
    assert capacity <= settled.start and settled.stop - 1 <= capacity + max(3, capacity // 4)
    assert limiter.baseline_s == pytest.approx(0.01, rel=0.06)


def test_never_rises_while_the_app_is_under_used() -> None:
    limiter = AdaptiveLimit(initial_limit=5)
    for _ in range(1000):
        limiter.on_sample(0.01, saturated=False)
    assert limiter.limit == 5


def test_follows_an_app_that_got_slower_for_good() -> None:
    limiter = AdaptiveLimit(initial_limit=10)
    drive(limiter, 20, 0.01, samples=50_000)
    settled = drive(limiter, 20, 0.03, samples=200_000)  # three times slower, same capacity
    assert 20 <= settled.start and settled.stop - 1 <= 25
    assert limiter.baseline_s == pytest.approx(0.03, rel=0.06)


def test_stays_within_bounds() -> None:
    limiter = AdaptiveLimit(initial_limit=5, min_limit=3, max_limit=8)
    assert drive(limiter, 100, 0.01, samples=10_000) == range(8, 9)
    settled = drive(limiter, 1, 0.01, samples=10_000)  # an app that serves one at a time
    assert 3 <= settled.start and settled.stop - 1 <= 5


async def test_adaptive_middleware_settles_below_a_fixed_overload_behind_uvicorn() -> None:
    capacity = 4
    inside_app = asyncio.Semaphore(capacity)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async with inside_app:  # the app's own knee: beyond 4 at once, latency climbs
            await asyncio.sleep(0.004)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limiter = AdaptiveLimit()  # starts at 10, past this app's knee
    gate = AdmissionControl(app, max_concurrency=limiter, max_queue=1000)

    async with serve(Probe(gate)) as client:

        async def user() -> None:
            for _ in range(30):
                assert (await client.get("/")).status_code == 200

        await asyncio.gather(*(user() for _ in range(24)))
    assert limiter.baseline_s < 0.008  # the probes found the app's unloaded latency
    assert capacity // 2 <= limiter.limit <= 2 * capacity
    assert gate.stats.in_flight == 0 and gate.stats.waiting == 0
