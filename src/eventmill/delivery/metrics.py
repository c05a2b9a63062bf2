"""The delivery feature's Prometheus metrics, on the app's registry.

The names are those the deployment's dashboard and alerts read
(``deploy/grafana/dashboards/eventmill.json``, ``deploy/prometheus/alerts.yml``). No
series is labelled by endpoint: a service with many endpoints would have as many
series (the API answers per endpoint: ``GET /v1/deliveries?endpoint_id=…``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["OUTCOMES", "DeliveryMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

OUTCOMES: Final = ("success", "http_error", "timeout", "connection_error", "refused")
"""The ``outcome`` label of ``eventmill_delivery_attempts_total``."""

_METRIC_OUTCOME: Final = {"gone": "http_error"}
"""Attempt outcomes as the metric counts them (410 Gone is an HTTP error answer)."""


class DeliveryMetrics:
    """Attempts by outcome, their duration, the due backlog, dead letters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "eventmill_delivery_attempts",
            "Outbound delivery attempts, by outcome (success, http_error, timeout, "
            "connection_error, refused).",
            ["outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "eventmill_delivery_attempt_duration_seconds",
            "Time from sending an attempt to its answer (or its failure).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.due = Gauge(
            "eventmill_delivery_due_deliveries",
            "Deliveries due now and not yet claimed (the store's count, every 15 s, up to "
            "100,000; every instance reports the same).",
            registry=registry,
        )
        self.dead = Counter(
            "eventmill_delivery_dead_lettered",
            "Failed deliveries published to the deliveries.dead topic.",
            registry=registry,
        )
        self.builder_errors = Counter(
            "eventmill_delivery_builder_errors",
            "Deliveries parked as failed because their payload builder raised.",
            registry=registry,
        )
        self.recorded = Counter(
            "eventmill_delivery_fanout_deliveries",
            "Deliveries recorded by the fan-out (one per event and matching endpoint).",
            registry=registry,
        )
        self.pruned = Counter(
            "eventmill_delivery_pruned_deliveries",
            "Finished deliveries deleted with their attempts by the retention pass.",
            registry=registry,
        )
        self.in_flight = Gauge(
            "eventmill_delivery_in_flight_deliveries",
            "Deliveries this process holds (sending, or queued in an endpoint's lane).",
            registry=registry,
        )
        self._by_outcome = {o: self.attempts.labels(o) for o in OUTCOMES}

    def observe(self, outcome: str, latency_ms: float | None) -> None:
        """Count one attempt and its duration."""
        outcome = _METRIC_OUTCOME.get(outcome, outcome)
        counter = self._by_outcome.get(outcome)
        if counter is None:
            counter = self._by_outcome[outcome] = self.attempts.labels(outcome)
        counter.inc()
        if latency_ms is not None:
            self.duration.observe(latency_ms / 1000)

    def track_in_flight(self, load: Callable[[], int]) -> None:
        """Read the in-flight gauge from ``load()`` when scraped (no cost per attempt)."""
        self.in_flight.set_function(load)
