"""Metrics every feature shares, one set per app registry: publishes to the bus.

``bus_metrics(registry)`` returns the same :class:`BusMetrics` for the same registry,
so every feature that publishes counts into one series (a Prometheus registry refuses
a second series of one name).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["BusMetrics", "bus_metrics"]


class BusMetrics:
    """``eventmill_bus_publishes_total{topic, outcome}`` (ok, error) and
    ``eventmill_bus_publish_duration_seconds{topic}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.publishes = Counter(
            "eventmill_bus_publishes_total",
            "Publish calls to the bus, by topic and outcome (ok, error).",
            ["topic", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "eventmill_bus_publish_duration_seconds",
            "Seconds until the bus accepted a publish call, by topic.",
            ["topic"],
            registry=registry,
        )

    @asynccontextmanager
    async def publishing(self, topic: str) -> AsyncIterator[None]:
        """Count and time the publish call made inside the block."""
        start = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            self.publishes.labels(topic, outcome).inc()
            if outcome == "ok":
                self.duration.labels(topic).observe(time.perf_counter() - start)


_SHARED: WeakKeyDictionary[CollectorRegistry, BusMetrics] = WeakKeyDictionary()


def bus_metrics(registry: CollectorRegistry) -> BusMetrics:
    """The :class:`BusMetrics` of ``registry`` (created on first use)."""
    found = _SHARED.get(registry)
    if found is None:
        found = _SHARED[registry] = BusMetrics(registry)
    return found
