"""Ingest's metrics: webhooks and API requests by source and outcome, and their latency."""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from eventmill.errors import EventmillError
from eventmill.web.errors import ApiError, status_for

__all__ = ["UNCONFIGURED_SOURCE", "IngestMetrics"]

UNCONFIGURED_SOURCE: Final = "unconfigured"
"""The ``source`` label of a webhook sent to a source no receiver is configured for:
one series for all of them, not one per name a client makes up."""


def outcome_of(exc: BaseException) -> str:
    """``unavailable`` for a 503, ``rejected`` for any other refusal, ``error`` else."""
    if isinstance(exc, ApiError):
        status = exc.status
    elif isinstance(exc, EventmillError):
        status = status_for(exc)[0]
    else:
        return "error"
    if status == 503:
        return "unavailable"
    return "rejected" if status < 500 else "error"


class IngestMetrics:
    """``eventmill_ingest_webhooks_received_total{source, outcome}`` (accepted,
    duplicate, rejected, unavailable, error; source ``api`` for ``POST /v1/events``,
    :data:`UNCONFIGURED_SOURCE` for a source not configured; one count per event) and
    ``eventmill_ingest_request_duration_seconds{source}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "eventmill_ingest_webhooks_received_total",
            "Webhooks and published events received, by source and outcome.",
            ["source", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "eventmill_ingest_request_duration_seconds",
            "Seconds from a request's arrival to its answer, by source.",
            ["source"],
            registry=registry,
        )
        self._counters: dict[tuple[str, str], Counter] = {}
        self._durations: dict[str, Histogram] = {}

    def _counter(self, source: str, outcome: str) -> Counter:
        key = (source, outcome)
        child = self._counters.get(key)
        if child is None:  # labels() costs more than the count: look it up once
            child = self._counters[key] = self.received.labels(source, outcome)
        return child

    def finished(self, source: str, started: float, exc: BaseException | None = None) -> None:
        """A request that began at ``started`` (``time.perf_counter()``) was answered:
        observe its duration; count it as refused if it ended with ``exc`` (success is
        counted by :meth:`accepted`, which knows whether it was a duplicate)."""
        if exc is not None:
            self._counter(source, outcome_of(exc)).inc()
        child = self._durations.get(source)
        if child is None:
            child = self._durations[source] = self.duration.labels(source)
        child.observe(time.perf_counter() - started)

    def accepted(self, source: str, *, new: int, duplicate: int) -> None:
        """Count ``new`` stored events and ``duplicate`` ones of one answered request."""
        if new:
            self._counter(source, "accepted").inc(new)
        if duplicate:
            self._counter(source, "duplicate").inc(duplicate)
