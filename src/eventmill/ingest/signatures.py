"""Webhook signature schemes: each proves a request came from its provider.

A scheme's :meth:`~SignatureScheme.verify` takes the request headers and the raw
body, and either returns a :class:`Verified` (the provider's delivery id, used as
the dedup key, and an event type when the provider sends one in a header) or raises
:class:`~eventmill.web.errors.SignatureError` whose message names what is wrong (missing
header, malformed, stale timestamp, no match) and never carries a secret or the
expected signature. Every comparison is constant-time (:func:`hmac.compare_digest`),
and every configured secret is tried (key rotation).

Schemes: :class:`RazorpayScheme`, :class:`StandardWebhooksScheme`,
:class:`GitHubScheme`, :class:`StripeScheme`, :class:`HmacScheme`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from starlette.datastructures import Headers

from eventmill.errors import ConfigurationError
from eventmill.web.errors import SignatureError

__all__ = [
    "GitHubScheme",
    "HmacScheme",
    "RazorpayScheme",
    "SignatureScheme",
    "StandardWebhooksScheme",
    "StripeScheme",
    "Verified",
    "body_digest",
]

_Algorithm = Literal["sha1", "sha256", "sha512"]


@dataclass(frozen=True, slots=True)
class Verified:
    """What a verified request tells beyond its body."""

    delivery_id: str | None
    """The provider's id of this event or delivery (the dedup key), if sent in a header."""
    event_type: str | None = None
    """The event type, if the provider sends it in a header (GitHub's ``X-GitHub-Event``)."""
    payload_id_field: str | None = None
    """Top-level body field holding the provider's event id when no header carries it
    (Stripe: ``id``); the receiver reads it after parsing."""
    delivery_header: str | None = None
    """The header ``delivery_id`` came from (``X-Razorpay-Event-Id``, ``webhook-id``, …),
    named in the error when its value cannot be a dedup key."""


class SignatureScheme(Protocol):
    """Verifies a webhook request. ``headers`` keys may be any case."""

    name: str
    signature_headers: tuple[str, ...]
    """Lower-case names of the headers that carry the signature: redacted wherever the
    request's headers are kept (the log of rejected webhooks), whatever they are called."""

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Verified:
        """Return what the request proves, or raise :class:`~.web.errors.SignatureError`."""
        ...


def body_digest(body: bytes) -> str:
    """The fallback dedup key: ``sha256:`` + hex SHA-256 of the raw body."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _lower(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` readable by lower-case name: Starlette's (case-insensitive already)
    as they are, without decoding every header; any other mapping copied."""
    if isinstance(headers, Headers):
        return headers
    return {k.lower(): v for k, v in headers.items()}


def _require(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name.lower(), "").strip()
    if not value:
        raise SignatureError(f"missing {name} header")
    return value


def _keys(secrets: Sequence[str | bytes], what: str) -> tuple[bytes, ...]:
    keys = tuple(s.encode() if isinstance(s, str) else bytes(s) for s in secrets)
    if not keys or any(not k for k in keys):
        raise ConfigurationError(f"{what}: at least one non-empty secret is required")
    return keys


def _hexdigest(keyed: hmac.HMAC, body: bytes) -> bytes:
    """Hex HMAC of ``body`` from a copy of the keyed ``keyed`` (left unchanged)."""
    mac = keyed.copy()
    mac.update(body)
    return mac.hexdigest().encode()


def _any_match(candidates: Sequence[bytes], expected: Sequence[bytes]) -> bool:
    """Constant-time: every candidate is compared with every expected value."""
    matched = False
    for candidate in candidates:
        for value in expected:
            matched |= hmac.compare_digest(candidate, value)
    return matched


def _check_timestamp(raw: str, tolerance: float, now: float | None) -> int:
    try:
        stamp = int(raw)
    except ValueError:
        raise SignatureError("malformed signature timestamp") from None
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance:
        raise SignatureError(f"signature timestamp outside the {tolerance:g} s tolerance")
    return stamp


class RazorpayScheme:
    """Razorpay: ``X-Razorpay-Signature`` = hex HMAC-SHA256 of the raw body.

    Dedup key: ``X-Razorpay-Event-Id`` (the body's digest if absent).
    """

    name = "razorpay"
    signature_headers: tuple[str, ...] = ("x-razorpay-signature",)

    def __init__(self, secrets: Sequence[str | bytes]) -> None:
        self._keys = _keys(secrets, "razorpay")
        # one keyed HMAC per secret, set up once; each request hashes into a copy
        self._macs = tuple(hmac.new(k, digestmod=hashlib.sha256) for k in self._keys)

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Verified:
        h = _lower(headers)
        given = _require(h, "X-Razorpay-Signature").lower().encode()
        expected = [_hexdigest(mac, body) for mac in self._macs]
        if not _any_match([given], expected):
            raise SignatureError("X-Razorpay-Signature does not match")
        return Verified(
            delivery_id=h.get("x-razorpay-event-id") or None,
            delivery_header="X-Razorpay-Event-Id",
        )


class StandardWebhooksScheme:
    """Standard Webhooks (standardwebhooks.com): ``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature`` (space-separated ``v1,<base64>``) over ``id.timestamp.body``.

    Secrets are base64, optionally prefixed ``whsec_``. Dedup key: ``webhook-id``.
    """

    name = "standard_webhooks"
    signature_headers: tuple[str, ...] = ("webhook-signature",)

    def __init__(self, secrets: Sequence[str], *, tolerance_seconds: float = 300) -> None:
        keys: list[bytes] = []
        for secret in secrets:
            raw = secret.removeprefix("whsec_")
            try:
                keys.append(base64.b64decode(raw + "==", validate=False))
            except (binascii.Error, ValueError) as exc:
                raise ConfigurationError("standard_webhooks: a secret is not base64") from exc
        self._keys = _keys(keys, "standard_webhooks")
        self._tolerance = tolerance_seconds

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Verified:
        h = _lower(headers)
        msg_id = _require(h, "webhook-id")
        raw_stamp = _require(h, "webhook-timestamp")
        header = _require(h, "webhook-signature")
        stamp = _check_timestamp(raw_stamp, self._tolerance, now)
        signed = f"{msg_id}.{stamp}.".encode() + body
        given: list[bytes] = []
        for part in header.split():
            version, _, value = part.partition(",")
            if version != "v1":
                continue
            try:
                given.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
        if not given:
            raise SignatureError("webhook-signature holds no v1 signature")
        expected = [hmac.new(k, signed, hashlib.sha256).digest() for k in self._keys]
        if not _any_match(given, expected):
            raise SignatureError("webhook-signature does not match")
        return Verified(delivery_id=msg_id, delivery_header="webhook-id")


class GitHubScheme:
    """GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``.

    Dedup key: ``X-GitHub-Delivery``; event type: ``X-GitHub-Event``.
    """

    name = "github"
    signature_headers: tuple[str, ...] = ("x-hub-signature-256", "x-hub-signature")

    def __init__(self, secrets: Sequence[str | bytes]) -> None:
        self._keys = _keys(secrets, "github")

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Verified:
        h = _lower(headers)
        header = _require(h, "X-Hub-Signature-256")
        algo, _, value = header.partition("=")
        if algo != "sha256" or not value:
            raise SignatureError("X-Hub-Signature-256 must look like sha256=<hex>")
        expected = [hmac.new(k, body, hashlib.sha256).hexdigest().encode() for k in self._keys]
        if not _any_match([value.lower().encode()], expected):
            raise SignatureError("X-Hub-Signature-256 does not match")
        return Verified(
            delivery_id=h.get("x-github-delivery") or None,
            event_type=h.get("x-github-event") or None,
            delivery_header="X-GitHub-Delivery",
        )


class StripeScheme:
    """Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`` over ``t.body`` (HMAC-SHA256).

    The whole secret (``whsec_…``) is the key. Dedup key: the body's ``id`` (``evt_…``).
    """

    name = "stripe"
    signature_headers: tuple[str, ...] = ("stripe-signature",)

    def __init__(self, secrets: Sequence[str | bytes], *, tolerance_seconds: float = 300) -> None:
        self._keys = _keys(secrets, "stripe")
        self._tolerance = tolerance_seconds

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Verified:
        h = _lower(headers)
        header = _require(h, "Stripe-Signature")
        stamps: list[str] = []
        given: list[bytes] = []
        for item in header.split(","):
            key, _, value = item.strip().partition("=")
            if key == "t":
                stamps.append(value)
            elif key == "v1" and value:
                given.append(value.lower().encode())
        if len(stamps) != 1:
            raise SignatureError("Stripe-Signature must hold exactly one t=<timestamp>")
        if not given:
            raise SignatureError("Stripe-Signature holds no v1 signature")
        stamp = _check_timestamp(stamps[0], self._tolerance, now)
        signed = f"{stamp}.".encode() + body
        expected = [hmac.new(k, signed, hashlib.sha256).hexdigest().encode() for k in self._keys]
        if not _any_match(given, expected):
            raise SignatureError("Stripe-Signature does not match")
        return Verified(delivery_id=None, payload_id_field="id")


class HmacScheme:
    """A plain HMAC of the raw body in one header, e.g. ``X-Signature: sha256=<hex>``.

    ``header``, ``algorithm`` (sha1/sha256/sha512), ``encoding`` (hex/base64) and
    ``prefix`` (text before the signature) are configurable. Dedup key: the
    ``id_header`` value if configured and present, else the body's digest.
    """

    name = "hmac"

    def __init__(
        self,
        secrets: Sequence[str | bytes],
        *,
        header: str = "X-Signature",
        algorithm: _Algorithm = "sha256",
        encoding: Literal["hex", "base64"] = "hex",
        prefix: str = "",
        id_header: str | None = None,
    ) -> None:
        if algorithm not in ("sha1", "sha256", "sha512"):
            raise ConfigurationError(f"hmac: unsupported algorithm {algorithm!r}")
        if encoding not in ("hex", "base64"):
            raise ConfigurationError(f"hmac: unsupported encoding {encoding!r}")
        self._keys = _keys(secrets, "hmac")
        self._header = header
        self.signature_headers: tuple[str, ...] = (header.lower(),)
        self._algorithm = algorithm
        self._encoding = encoding
        self._prefix = prefix
        self._id_header = id_header.lower() if id_header else None
        self._id_header_name = id_header or None

    def _encode(self, digest: bytes) -> bytes:
        if self._encoding == "hex":
            return digest.hex().encode()
        return base64.b64encode(digest)

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Verified:
        h = _lower(headers)
        value = _require(h, self._header)
        if self._prefix:
            if not value.startswith(self._prefix):
                raise SignatureError(f"{self._header} must start with {self._prefix!r}")
            value = value[len(self._prefix) :]
        given = value.strip()
        if self._encoding == "hex":
            given = given.lower()
        expected = [self._encode(hmac.new(k, body, self._algorithm).digest()) for k in self._keys]
        if not _any_match([given.encode()], expected):
            raise SignatureError(f"{self._header} does not match")
        delivery = h.get(self._id_header) if self._id_header else None
        return Verified(delivery_id=delivery or None, delivery_header=self._id_header_name)
