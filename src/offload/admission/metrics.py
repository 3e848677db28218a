"""The counters of :class:`offload.admission.AdmissionControl` and their Prometheus export.

The middleware keeps plain counters, so that nothing is done per request for Prometheus; this
module turns a snapshot of them into metric families when the registry is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric


@dataclass(frozen=True)
class AdmissionStats:
    """A snapshot of the middleware's counters (the same figures the metrics export)."""

    limit: int
    in_flight: int
    waiting: int
    admitted: int
    bypassed: int
    shed: dict[str, int]


def families(
    namespace: str,
    stats: AdmissionStats,
    wait_bounds_s: Sequence[float],
    wait_counts: Sequence[int],
    wait_sum_s: float,
) -> Iterator[Metric]:
    """The metric families for one snapshot; ``wait_counts`` has one count per bound in
    ``wait_bounds_s`` plus one for longer waits."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    yield GaugeMetricFamily(
        f"{namespace}_in_flight", "Requests inside the app.", value=stats.in_flight
    )
    yield GaugeMetricFamily(
        f"{namespace}_waiting", "Requests waiting for admission.", value=stats.waiting
    )
    yield GaugeMetricFamily(f"{namespace}_limit", "Current concurrency limit.", stats.limit)
    yield CounterMetricFamily(
        f"{namespace}_admitted", "Requests admitted to the app.", value=stats.admitted
    )
    shed = CounterMetricFamily(
        f"{namespace}_shed", "Requests shed without reaching the app.", labels=["reason"]
    )
    for reason, count in stats.shed.items():
        shed.add_metric([reason], count)
    yield shed
    cumulative, buckets = 0, []
    for bound, count in zip((*wait_bounds_s, float("inf")), wait_counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    yield HistogramMetricFamily(
        f"{namespace}_wait_seconds",
        "Time admitted requests waited for a slot.",
        buckets=buckets,
        sum_value=wait_sum_s,
    )


def register(
    registry: CollectorRegistry | None, collect: Callable[[], Iterator[Metric]]
) -> CollectorRegistry | None:
    """Register ``collect`` with ``registry``, or with a new private registry if None; None
    if prometheus_client is not installed and no registry was given."""
    if registry is None:
        try:
            from prometheus_client import CollectorRegistry
        except ImportError:  # metrics stay in ``stats`` only
            return None
        registry = CollectorRegistry(auto_describe=True)

    from prometheus_client.registry import Collector

    class _Collector(Collector):
        def collect(self) -> Iterator[Metric]:
            return collect()

    registry.register(_Collector())
    return registry
