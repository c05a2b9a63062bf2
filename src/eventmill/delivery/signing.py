"""Standard Webhooks signatures (https://www.standardwebhooks.com): ``v1,`` + the
base64 HMAC-SHA256, keyed with the secret's bytes, of ``{webhook-id}.{timestamp}.{body}``."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["secret_key", "sign"]


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret (its base64 part, decoded)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(keys: Iterable[bytes], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per key, space-separated
    (several during a secret rotation)."""
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )
