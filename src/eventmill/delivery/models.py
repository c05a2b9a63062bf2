"""Request and response bodies of the delivery API, and the checks every endpoint's
fields pass (shared by the API and the CLI)."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import Any, Final, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from eventmill.delivery.config import MAX_OVERLAP_SECONDS, DeliverySettings
from eventmill.delivery.network import AddressPolicy
from eventmill.delivery.store import AttemptRecord, DeliveryRecord, EndpointRecord
from eventmill.errors import ConfigurationError
from eventmill.events.envelope import UtcDatetime
from eventmill.events.registry import validate_pattern

__all__ = [
    "AttemptOut",
    "DeliveryDetailOut",
    "DeliveryOut",
    "DeliveryPageOut",
    "EndpointCreated",
    "EndpointIn",
    "EndpointOut",
    "EndpointPageOut",
    "EndpointPatch",
    "RecoverIn",
    "RecoverOut",
    "RotateIn",
    "SecretOut",
    "check_headers",
    "check_url",
]

MAX_HEADERS: Final = 20
MAX_EVENT_TYPES: Final = 100
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "traceparent",  # eventmill continues the event's trace
        "content-encoding",  # the body is sent as it is
        "expect",
    }
)
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""What a header value cannot hold (a tab it can)."""
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252}[A-Za-z0-9_.])?")
"""A host name as it goes on the wire (IDNA-encoded): letters, digits, ``- _ .``."""
_NO_CONTROL: Final = r"^[^\x00-\x1f\x7f]*$"
"""A user id (as an event's) holds no control character."""
_NO_NUL: Final = r"^[^\x00]*$"
"""A description may hold line breaks, not U+0000 (which no database column holds)."""


def check_url(url: str, settings: DeliverySettings) -> str:
    """Return ``url`` if it can be a destination, else raise ``ValueError`` saying why.

    An IP-literal host that the SSRF guard refuses is refused here already; a name is
    checked on every attempt, on the addresses it resolves to then.
    """
    if len(url) > 2048:
        raise ValueError("url is longer than 2048 characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"url is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError("url must be http:// or https://")
    if settings.https_only and parsed.scheme != "https":
        raise ValueError("url must be https:// (delivery.https_only)")
    if not parsed.host:
        raise ValueError("url has no host")
    if parsed.userinfo:
        raise ValueError("url must not carry credentials; use headers instead")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError("url's port must be 1-65535")
    try:
        literal = ipaddress.ip_address(parsed.host)
    except ValueError:
        if _HOST_NAME.fullmatch(parsed.raw_host.decode("ascii", "replace")) is None:
            raise ValueError("url's host is not a valid host name") from None
        return url
    reason = AddressPolicy(settings.allow_networks).refusal(literal)
    if reason is not None:
        raise ValueError(f"url refused: {reason}")
    return url


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """Return ``headers`` if they may be sent with every attempt, else raise ``ValueError``."""
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, value in headers.items():
        if name.lower() in seen:
            raise ValueError(f"header {name!r} is given twice (header names ignore case)")
        seen.add(name.lower())
        if _TOKEN.fullmatch(name) is None:
            raise ValueError(f"header name {name!r} is not a valid HTTP header name")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by eventmill and cannot be overridden")
        if len(value) > 1000 or _CONTROL.search(value) is not None:
            raise ValueError(
                f"header {name!r}: at most 1000 characters, no line breaks or control characters"
            )
    return headers


def _check_types(value: list[str]) -> list[str]:
    if len(value) > MAX_EVENT_TYPES:
        raise ValueError(f"at most {MAX_EVENT_TYPES} event types")
    for pattern in value:
        try:
            validate_pattern(pattern)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
    return list(dict.fromkeys(value))


class EndpointIn(BaseModel):
    """A new endpoint."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Where deliveries are POSTed (http:// or https://).")
    user_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=_NO_CONTROL,
        description="Whose events it receives. An end user's token: their own id (the "
        "default). An admin key: any user, or none for every user's events.",
    )
    event_types: list[str] = Field(
        default_factory=list,
        description="Event names or patterns (`razorpay.payment.*`); empty: every event.",
    )
    description: str = Field(default="", max_length=1024, pattern=_NO_NUL)
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers sent with every attempt."
    )
    rate_limit: float | None = Field(
        default=None, gt=0, le=100_000, description="Most attempts per second (default: none)."
    )
    disabled: StrictBool = False

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return _check_types(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)


class EndpointPatch(BaseModel):
    """Changes to an endpoint; fields left out stay as they are. ``disabled: false``
    re-enables it (and clears its failure state)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    user_id: str | None = Field(default=None, min_length=1, max_length=256, pattern=_NO_CONTROL)
    event_types: list[str] | None = None
    description: str | None = Field(default=None, max_length=1024, pattern=_NO_NUL)
    headers: dict[str, str] | None = None
    rate_limit: float | None = Field(default=None, gt=0, le=100_000)
    disabled: StrictBool | None = None

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_types(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else check_headers(value)


class EndpointOut(BaseModel):
    """An endpoint (its secret is shown only on creation and rotation)."""

    id: str
    user_id: str | None
    url: str
    description: str
    event_types: list[str]
    headers: dict[str, str]
    rate_limit: float | None
    disabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    """First failed attempt since the last success (``null`` while healthy)."""
    previous_secret_expires_at: datetime | None
    """Until then the previous secret signs too (a rotation's overlap); ``null`` once it
    has passed, or without a rotation."""
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, ep: EndpointRecord) -> EndpointOut:
        return cls(**_endpoint_fields(ep))


def _overlap_end(ep: EndpointRecord) -> datetime | None:
    """The end of the rotation's overlap while it lasts (the previous secret signs)."""
    expires = ep.previous_secret_expires_at
    if expires is None or expires <= datetime.now(UTC):
        return None
    return expires


def _endpoint_fields(ep: EndpointRecord) -> dict[str, Any]:
    return {
        "id": ep.id,
        "user_id": ep.user_id,
        "url": ep.url,
        "description": ep.description,
        "event_types": list(ep.event_types),
        "headers": dict(ep.headers),
        "rate_limit": ep.rate_limit,
        "disabled": ep.disabled,
        "disabled_reason": ep.disabled_reason,
        "failing_since": ep.failing_since,
        "previous_secret_expires_at": _overlap_end(ep),
        "created_at": ep.created_at,
        "updated_at": ep.updated_at,
    }


class EndpointCreated(EndpointOut):
    """A new endpoint, with its signing secret (shown this once)."""

    secret: str
    """``whsec_`` + base64: verify deliveries with it (Standard Webhooks)."""

    @classmethod
    def of(cls, ep: EndpointRecord) -> EndpointCreated:
        return cls(**_endpoint_fields(ep), secret=ep.secret)


class EndpointPageOut(BaseModel):
    """One page of endpoints, newest first."""

    endpoints: list[EndpointOut]
    next_cursor: str | None
    has_more: bool


class RotateIn(BaseModel):
    """How long the current secret keeps signing beside the new one."""

    model_config = ConfigDict(extra="forbid")

    overlap_seconds: float | None = Field(
        default=None,
        ge=0,
        le=MAX_OVERLAP_SECONDS,
        description="Default: delivery.rotation_overlap_seconds.",
    )


class SecretOut(BaseModel):
    """The endpoint's new secret (shown this once)."""

    id: str
    secret: str
    previous_secret_expires_at: datetime | None


class RecoverIn(BaseModel):
    """Resend the endpoint's failed deliveries created in ``[since, until)``."""

    model_config = ConfigDict(extra="forbid")

    since: UtcDatetime
    until: UtcDatetime | None = None
    """Both in UTC (without an offset, UTC; a number is Unix seconds), so a time with
    an offset compares with one without."""

    @model_validator(mode="after")
    def _ordered(self) -> RecoverIn:
        if self.until is not None and self.until <= self.since:
            raise ValueError("until must be after since (the range is [since, until))")
        return self


class RecoverOut(BaseModel):
    """How many failed deliveries were made due again."""

    requeued: int


class DeliveryOut(BaseModel):
    """One delivery of one event to one endpoint. Its ``id`` is the ``webhook-id``."""

    id: str
    event_id: str
    endpoint_id: str
    user_id: str | None
    event_name: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, d: DeliveryRecord) -> DeliveryOut:
        return cls(**_delivery_fields(d))


def _delivery_fields(d: DeliveryRecord) -> dict[str, Any]:
    return {
        "id": d.id,
        "event_id": d.event_id,
        "endpoint_id": d.endpoint_id,
        "user_id": d.user_id,
        "event_name": d.event_name,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at if d.status == "pending" else None,
        "last_attempt_at": d.last_attempt_at,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "created_at": d.created_at,
        "finished_at": d.finished_at,
    }


class AttemptOut(BaseModel):
    """One attempt."""

    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: float | None
    outcome: str
    error: str | None
    response_body: str | None
    """The first 1 KiB of the answer's body."""


class DeliveryDetailOut(DeliveryOut):
    """A delivery with its attempts (latest 100, oldest first)."""

    history: list[AttemptOut]

    @classmethod
    def with_attempts(cls, d: DeliveryRecord, attempts: list[AttemptRecord]) -> DeliveryDetailOut:
        history = [
            AttemptOut(
                attempt=a.attempt,
                started_at=a.started_at,
                status_code=a.status_code,
                latency_ms=a.latency_ms,
                outcome=a.outcome,
                error=a.error,
                response_body=a.response_body,
            )
            for a in attempts
        ]
        return cls(**_delivery_fields(d), history=history)


class DeliveryPageOut(BaseModel):
    """One page of deliveries, newest first."""

    deliveries: list[DeliveryOut]
    next_cursor: str | None
    has_more: bool
