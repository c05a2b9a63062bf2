"""The delivery feature's Prometheus metrics, on the app's registry."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["DeliveryMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DeliveryMetrics:
    """Attempts by endpoint and outcome, their latency, the backlog, dead letters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "eventmill_delivery_attempts",
            "Delivery attempts, by endpoint and outcome (success, http_error, timeout, "
            "network_error, refused, gone, builder_error).",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "eventmill_delivery_attempt_seconds",
            "Time from sending an attempt to its answer (or failure), by outcome.",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.due = Gauge(
            "eventmill_delivery_due",
            "Deliveries due now and not yet claimed (counted every 15 s, up to 100,000).",
            registry=registry,
        )
        self.in_flight = Gauge(
            "eventmill_delivery_in_flight",
            "Deliveries this process holds for an endpoint (sending or queued).",
            ["endpoint"],
            registry=registry,
        )
        self.dead = Counter(
            "eventmill_delivery_dead",
            "Failed deliveries published to the deliveries.dead topic.",
            registry=registry,
        )
        self.recorded = Counter(
            "eventmill_delivery_fanout",
            "Deliveries recorded by the fan-out (one per event and matching endpoint).",
            registry=registry,
        )

    def observe(self, endpoint_id: str, outcome: str, latency_ms: float | None) -> None:
        """Count one attempt and its latency."""
        self.attempts.labels(endpoint_id, outcome).inc()
        if latency_ms is not None:
            self.latency.labels(outcome).observe(latency_ms / 1000)

    def forget(self, endpoint_id: str) -> None:
        """Drop an idle endpoint's in-flight gauge."""
        with contextlib.suppress(KeyError):
            self.in_flight.remove(endpoint_id)
