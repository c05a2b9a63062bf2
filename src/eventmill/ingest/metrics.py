"""Ingest's metrics: webhooks and API requests by source and outcome, and their latency."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram

from eventmill.errors import EventmillError
from eventmill.web.errors import ApiError, status_for

__all__ = ["IngestMetrics"]


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
    one count per event) and ``eventmill_ingest_request_duration_seconds{source}``."""

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

    @contextmanager
    def measure(self, source: str) -> Iterator[None]:
        """Time the block; count it as refused if it raises (success is counted by
        :meth:`accepted`, which knows whether it was a duplicate)."""
        start = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            self.received.labels(source, outcome_of(exc)).inc()
            raise
        finally:
            self.duration.labels(source).observe(time.perf_counter() - start)

    def accepted(self, source: str, *, new: int, duplicate: int) -> None:
        """Count ``new`` stored events and ``duplicate`` ones of one answered request."""
        if new:
            self.received.labels(source, "accepted").inc(new)
        if duplicate:
            self.received.labels(source, "duplicate").inc(duplicate)
