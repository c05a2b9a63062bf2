"""Metrics every feature shares, one set per app registry: publishes to the bus.

``bus_metrics(registry)`` returns the same :class:`BusMetrics` for the same registry,
so every feature that publishes counts into one series (a Prometheus registry refuses
a second series of one name).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from eventmill.pubsub._outage import reconnects

if TYPE_CHECKING:
    from eventmill.web.seam import Resources

__all__ = ["BusMetrics", "ReconnectCollector", "bus_metrics"]


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
        self._topics: dict[str, tuple[Counter, Histogram]] = {}

    def published(self, topic: str, started: float) -> None:
        """A publish call to ``topic`` that began at ``started`` (``time.perf_counter()``)
        was accepted: count it and observe its duration."""
        children = self._topics.get(topic)
        if children is None:  # labels() costs more than the count: look them up once
            children = self._topics[topic] = (
                self.publishes.labels(topic, "ok"),
                self.duration.labels(topic),
            )
        children[0].inc()
        children[1].observe(time.perf_counter() - started)

    def failed(self, topic: str) -> None:
        """A publish call to ``topic`` failed."""
        self.publishes.labels(topic, "error").inc()


_SHARED: WeakKeyDictionary[CollectorRegistry, BusMetrics] = WeakKeyDictionary()


def bus_metrics(registry: CollectorRegistry) -> BusMetrics:
    """The :class:`BusMetrics` of ``registry`` (created on first use)."""
    found = _SHARED.get(registry)
    if found is None:
        found = _SHARED[registry] = BusMetrics(registry)
    return found


class ReconnectCollector(Collector):
    """``eventmill_bus_reconnects_total`` (times a bus's server came back after an outage,
    in this process) and ``eventmill_store_reconnects_total`` (times the store's database
    did), read when scraped."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    def collect(self) -> Iterator[Metric]:
        bus = CounterMetricFamily(
            "eventmill_bus_reconnects", "Times the bus's server came back after an outage."
        )
        bus.add_metric([], float(sum(reconnects().values())))
        yield bus
        store = CounterMetricFamily(
            "eventmill_store_reconnects",
            "Times the store's database came back after a lost connection.",
        )
        db = self._resources.store
        store.add_metric([], float(db.reconnects if db is not None else 0))
        yield store
