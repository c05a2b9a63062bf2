"""Configuration of the ingest feature: its settings section, webhook sources and schemes.

:class:`IngestSettings` is ingest's section of the service settings. Its fields sit at
the top level of :class:`eventmill.settings.Settings` (``EVENTMILL_MAX_BODY_BYTES``,
``RAZORPAY_WEBHOOK_SECRET``, ``EVENTMILL_SOURCES__…``): they predate the other
features' nested sections and keep their names.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from eventmill.errors import ConfigurationError
from eventmill.events import transformer_for
from eventmill.ingest.context import Receiver
from eventmill.ingest.signatures import (
    GitHubScheme,
    HmacScheme,
    SignatureScheme,
    StandardWebhooksScheme,
    StripeScheme,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "RESERVED_SOURCES",
    "IngestSettings",
    "SourceConfig",
    "receiver_for",
    "scheme_for",
    "split_secrets",
    "valid_source_name",
]

RESERVED_SOURCES = frozenset({"razorpay", "internal", "system"})
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def valid_source_name(name: str) -> bool:
    """1-64 characters of ``a-z 0-9 _ -``, and not a reserved source."""
    return 0 < len(name) <= 64 and set(name) <= _NAME_CHARS and name not in RESERVED_SOURCES


def split_secrets(value: Any) -> Any:
    """Accept ``"a,b"`` (comma-separated, for rotation) as well as a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, SecretStr):
        return split_secrets(value.get_secret_value())
    return value


class SourceConfig(BaseModel):
    """A generic webhook source served at ``POST /webhooks/{name}``."""

    model_config = {"extra": "forbid", "frozen": True}

    scheme: Literal["standard_webhooks", "github", "stripe", "hmac"]
    """How requests prove themselves: Standard Webhooks (``webhook-id`` / ``-timestamp`` /
    ``-signature``), GitHub (``X-Hub-Signature-256``), Stripe (``Stripe-Signature``), or a
    plain HMAC of the raw body in a configurable header."""
    secrets: Annotated[list[SecretStr], NoDecode] = Field(min_length=1)
    """Signing secrets; any one of them verifies a request (several, for rotation). A
    comma-separated string is accepted. Standard Webhooks secrets may carry ``whsec_``."""
    tolerance_seconds: int = Field(default=300, ge=1)
    """Standard Webhooks and Stripe: reject timestamps further than this from now (300)."""
    header: str = "X-Signature"
    """hmac: the header carrying the signature (default ``X-Signature``)."""
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    """hmac: the digest (default ``sha256``)."""
    encoding: Literal["hex", "base64"] = "hex"
    """hmac: how the signature is written (default ``hex``)."""
    prefix: str = ""
    """hmac: text before the signature in the header, e.g. ``sha256=`` (default none)."""
    id_header: str | None = None
    """hmac: header holding the provider's delivery id, used as the dedup key. Without it
    the dedup key is the SHA-256 of the body (same body = same event)."""
    user_id_paths: list[str] | None = None
    """Dotted JSON paths tried in order for the event's ``user_id`` (default: the
    scheme's own — Stripe ``data.object.metadata.user_id``, others none)."""

    @field_validator("secrets", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_secrets(value)


def receiver_for(config: SourceConfig) -> Receiver:
    """Build the receiver (scheme + transformer) of a configured source."""
    paths = tuple(config.user_id_paths) if config.user_id_paths is not None else None
    name = "standard" if config.scheme == "standard_webhooks" else config.scheme
    return Receiver(scheme=scheme_for(config), transformer=transformer_for(name, paths))


def scheme_for(config: SourceConfig) -> SignatureScheme:
    """Build the signature scheme a source is configured with."""
    secrets = [s.get_secret_value() for s in config.secrets]
    try:
        if config.scheme == "standard_webhooks":
            return StandardWebhooksScheme(secrets, tolerance_seconds=config.tolerance_seconds)
        if config.scheme == "github":
            return GitHubScheme(secrets)
        if config.scheme == "stripe":
            return StripeScheme(secrets, tolerance_seconds=config.tolerance_seconds)
        return HmacScheme(
            secrets,
            header=config.header,
            algorithm=config.algorithm,
            encoding=config.encoding,
            prefix=config.prefix,
            id_header=config.id_header,
        )
    except ConfigurationError:
        raise
    except ValueError as exc:  # pragma: no cover - validated by the model already
        raise ConfigurationError(f"source scheme {config.scheme}: {exc}") from None


class IngestSettings(BaseModel):
    """Ingest's settings section (top-level fields of the service settings)."""

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1)
    """Largest accepted request body on ingest routes; larger → 413 (default 1 MiB)."""
    request_timeout_seconds: float = Field(default=4.0, gt=0)
    """Budget for storing and then publishing one request, together; over it → 503,
    inside Razorpay's 5-second window (default 4 s)."""
    razorpay_webhook_secret: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices(
            "razorpay_webhook_secret",
            "EVENTMILL_RAZORPAY_WEBHOOK_SECRET",
            "RAZORPAY_WEBHOOK_SECRET",
        ),
    )
    """Razorpay webhook secret(s), comma-separated for rotation; read from
    ``RAZORPAY_WEBHOOK_SECRET`` or ``EVENTMILL_RAZORPAY_WEBHOOK_SECRET``. Empty: the
    Razorpay route answers 404 (source not configured)."""
    razorpay_user_id_paths: list[str] | None = None
    """Dotted JSON paths (relative to the payload entity) tried in order for ``user_id``
    (default: the transformer's own, ``notes.user_id`` then ``account_id``)."""
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    """Generic webhook sources by name, served at ``POST /webhooks/{name}`` (default none)."""
    idempotency_ttl_seconds: float = Field(default=86_400.0, ge=1)
    """How long an ``Idempotency-Key`` of ``POST /v1/events`` is remembered, from its
    first use (default 86,400 s = 24 h): within it a retry is answered the first
    response, and another body under the key is 409; after it the key is forgotten
    (expired keys are deleted every 10 minutes, or every ``idempotency_ttl_seconds``
    if shorter)."""
    relay_interval_seconds: float = Field(default=5.0, gt=0)
    """How often the outbox relay publishes stored-but-unpublished events (default 5 s)."""
    relay_grace_seconds: float = Field(default=10.0, ge=0)
    """The periodic relay leaves events younger than this to the request that stored
    them (default 10 s); the pass on start takes all of them."""
    relay_batch_size: int = Field(default=500, ge=1)
    """Most events the relay publishes per round (default 500)."""
    audit_enabled: bool = True
    """Run the audit handler (group ``audit`` on topic ``events``) that stores events
    published on the bus by other paths (default yes)."""
    fault: Literal["crash_after_store"] | None = None
    """Fault injection for tests only: ``crash_after_store`` kills the process
    (``os._exit``) after an event is stored and before it is published (default none)."""

    @field_validator("razorpay_webhook_secret", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_secrets(value)

    @field_validator("fault", mode="before")
    @classmethod
    def _empty_fault(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name in value:
            if not valid_source_name(name):
                raise ValueError(
                    f"source name {name!r}: use 1-64 of a-z, 0-9, '_', '-' "
                    f"(not one of {', '.join(sorted(RESERVED_SOURCES))})"
                )
        return value
