"""Configuration of the delivery feature: its settings section ``delivery``
(``EVENTMILL_DELIVERY__*``)."""

from __future__ import annotations

import ipaddress
from typing import Final

from pydantic import BaseModel, Field, field_validator, model_validator

from eventmill import __version__

__all__ = ["DEFAULT_RETRY_SCHEDULE", "MAX_OVERLAP_SECONDS", "DeliverySettings"]

DEFAULT_RETRY_SCHEDULE: Final = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""At once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (Svix's schedule)."""


MAX_OVERLAP_SECONDS: Final = 30 * 86400
"""The longest an old secret signs beside its successor after a rotation."""


class DeliverySettings(BaseModel):
    """Outbound webhook delivery (settings section ``delivery``; env
    ``EVENTMILL_DELIVERY__<FIELD>``, e.g. ``EVENTMILL_DELIVERY__RETRY_SCHEDULE='[0.2, 0.5]'``)."""

    model_config = {"extra": "forbid", "frozen": True}

    enabled: bool = True
    """Run the delivery feature's workers (fan-out and dispatcher) in this process
    (default yes); its routes are served either way."""
    retry_schedule: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE), min_length=1, max_length=50
    )
    """Delay in seconds before each attempt: the first entry before the first attempt
    (0: at once), the next before the second, and so on; a delivery whose every attempt
    failed is dead. Default: 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h."""
    jitter: float = Field(default=0.2, ge=0, lt=1)
    """Each delay is multiplied by a random factor in ``1 ± jitter`` (default 0.2)."""
    timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    """Total time one attempt may take: connect, send, read the answer (default 15 s)."""
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    """Time to open the connection, within the total (default 5 s; at most the total)."""
    max_retry_after_seconds: float = Field(default=3600.0, ge=0)
    """Cap on a ``Retry-After`` answered with 429 or 503 (default 1 h)."""
    disable_after_seconds: float = Field(default=5 * 86400.0, gt=0)
    """An endpoint whose attempts have failed, without a success, for this long is
    disabled and ``endpoint.disabled`` is published (default 5 days)."""
    rotation_overlap_seconds: float = Field(default=86400.0, ge=0, le=MAX_OVERLAP_SECONDS)
    """After ``rotate-secret``, how long the old secret still signs beside the new one
    (default 24 h, at most 30 days)."""
    allow_networks: list[str] = Field(default_factory=list)
    """CIDRs a destination may resolve to even though they are not public (loopback,
    private, link-local, …); default none. ``["127.0.0.0/8"]`` for local tests."""
    https_only: bool = False
    """Refuse ``http://`` destinations (default: both allowed)."""
    concurrency_per_endpoint: int = Field(default=10, ge=1, le=1000)
    """Most attempts in flight to one endpoint (default 10)."""
    max_in_flight: int = Field(default=1000, ge=1, le=100_000)
    """Most deliveries this process holds at once, sending or queued (default 1000)."""
    claim_batch: int = Field(default=200, ge=1, le=5000)
    """Most due deliveries claimed from the store per round (default 200)."""
    lease_seconds: float = Field(default=60.0, gt=0)
    """How long a claim holds a delivery; a dispatcher killed meanwhile leaves it to be
    claimed again once the lease ends. Must exceed ``timeout_seconds`` (default 60 s)."""
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    """How often the dispatcher looks for due deliveries when nothing woke it (default 1 s)."""
    fanout_concurrency: int = Field(default=64, ge=1, le=10_000)
    """Events the fan-out handler takes from the bus at once; they are matched and
    recorded together, in one transaction (default 64)."""
    retention_days: float | None = Field(default=30.0, gt=0)
    """Succeeded and failed deliveries, with their attempts, are deleted once they were
    created and finished this many days ago (default 30; ``null``: kept forever). Pending
    ones are never deleted, nor failed ones not yet published to ``deliveries.dead``."""
    retention_interval_seconds: float = Field(default=3600.0, gt=0)
    """How often the retention pass runs (default hourly); it deletes in batches of
    ``retention_batch``, one short transaction each."""
    retention_batch: int = Field(default=1000, ge=1, le=10_000)
    """Deliveries deleted per transaction by the retention pass (default 1000)."""
    builders: dict[str, str] = Field(default_factory=dict)
    """Payload builders by event-name pattern: ``{"razorpay.payment.*": "module:function"}``;
    the function takes the :class:`~eventmill.Event` and returns a dict (sent as JSON) or
    bytes. Default: none (the event envelope's JSON is sent)."""
    user_agent: str = f"eventmill-webhooks/{__version__}"
    """``User-Agent`` of every attempt."""

    @field_validator("retry_schedule")
    @classmethod
    def _delays(cls, value: list[float]) -> list[float]:
        if any(d < 0 for d in value):
            raise ValueError("retry_schedule delays must be >= 0 seconds")
        return value

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"allow_networks: {cidr!r} is not a CIDR") from None
        return value

    @field_validator("builders")
    @classmethod
    def _builders(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern, target in value.items():
            module, sep, name = target.partition(":")
            if not sep or not module or not name:
                raise ValueError(f"builders[{pattern!r}]: use 'module:function', got {target!r}")
        return value

    @model_validator(mode="after")
    def _lease(self) -> DeliverySettings:
        if self.lease_seconds < self.timeout_seconds + 5:
            raise ValueError("lease_seconds must exceed timeout_seconds by at least 5 s")
        return self
