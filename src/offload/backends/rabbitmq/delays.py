"""Time on RabbitMQ, as both forms (store-backed and store-less) count it: delays in whole
milliseconds and their chains of power-of-two TTL queues, and how soon a claim holding parked
deliveries asks again."""

from __future__ import annotations

import math

PARKED_RETRY_S = 0.1  # how soon a worker holding parked deliveries asks again
MAX_DELAY_MS = 2**42  # ~139 years; a longer (or infinite) delay is clamped to it
MAX_DELAY_BIT = 31  # 2**31 ms is ~24.8 days: longer delays take one more pass through the chain


def ms(delay_s: float) -> int:
    """A delay in whole milliseconds, 0 for a negative or NaN one, at most MAX_DELAY_MS (the
    delay may come from a message or a record: untrusted)."""
    if not delay_s > 0:
        return 0
    if delay_s >= MAX_DELAY_MS / 1000:
        return MAX_DELAY_MS
    return math.ceil(delay_s * 1000)


def delay_chain(delay_ms: int) -> int:
    """The first hop of a delay: the largest power-of-two TTL not above it (0 when none)."""
    if delay_ms < 1:
        return 0
    return 1 << min(delay_ms.bit_length() - 1, MAX_DELAY_BIT)
