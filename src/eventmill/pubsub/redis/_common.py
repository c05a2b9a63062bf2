"""Pieces shared by the redis:// publisher and subscriptions (private).

* The entry layout: a message is one stream entry with the fields ``id`` (UTF-8),
  ``metadata`` (a JSON object of strings, omitted when empty) and ``payload`` (raw
  bytes). Redis values are binary safe, so payloads travel byte for byte.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from eventmill.message import Message

__all__ = ["decode_entry", "encode_fields", "log"]

log = logging.getLogger("eventmill.pubsub.redis")

_ID = b"id"
_METADATA = b"metadata"
_PAYLOAD = b"payload"


def encode_fields(msg: Message) -> list[Any]:
    """Return the ``field value ...`` arguments of ``XADD`` for ``msg``."""
    if msg.metadata:
        return [_ID, msg.id, _METADATA, orjson.dumps(msg.metadata), _PAYLOAD, msg.payload]
    return [_ID, msg.id, _PAYLOAD, msg.payload]


def decode_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[str, dict[str, str], bytes]:
    """Return ``(id, metadata, payload)`` of a stream entry.

    Entries written by other tools are tolerated: a missing ``id`` falls back to the
    entry id, missing metadata to ``{}``, a missing payload to ``b""``.
    """
    raw_id = fields.get(_ID)
    msg_id = raw_id.decode("utf-8", "replace") if raw_id else entry_id.decode()
    metadata: dict[str, str] = {}
    raw_md = fields.get(_METADATA)
    if raw_md:
        try:
            loaded = orjson.loads(raw_md)
        except orjson.JSONDecodeError:
            loaded = None
        if isinstance(loaded, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
        ):
            metadata = loaded
        else:
            log.warning("redis:// entry %s has malformed metadata; delivered without it", entry_id)
    return msg_id, metadata, fields.get(_PAYLOAD, b"")
