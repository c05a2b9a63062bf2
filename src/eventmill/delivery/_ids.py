"""Ids of endpoints and deliveries (prefix + a ULID: they sort by creation time) and
endpoint signing secrets."""

from __future__ import annotations

import base64
import os
import time
from datetime import datetime
from typing import Final

__all__ = ["id_floor", "new_id", "new_secret"]

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _encode(n: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_CROCKFORD[n & 31])
        n >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """``prefix`` + ``_`` + 26 Crockford base32 characters: 48 bits of millisecond time,
    then 80 random bits (so ids of one prefix sort by creation time)."""
    n = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_encode(n, 26)}"


def id_floor(prefix: str, when: datetime) -> str:
    """The smallest id :func:`new_id` could have made at ``when``: ``id >= id_floor(t)``
    selects what was created at ``t`` or later."""
    ms = max(0, int(when.timestamp() * 1000))
    return f"{prefix}_{_encode(ms << 80, 26)}"


def new_secret() -> str:
    """A signing secret: ``whsec_`` + base64 of 32 random bytes (Standard Webhooks)."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()
