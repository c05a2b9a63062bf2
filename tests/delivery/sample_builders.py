"""Payload builders named in the tests' configuration (``module:function``)."""

from __future__ import annotations

from typing import Any

from eventmill.events import Event


def order_summary(event: Event) -> dict[str, Any]:
    return {"type": event.event_name, "order": event.payload["order"], "user": event.user_id}


def raw_text(event: Event) -> bytes:
    return b'{"raw": true}'


def broken(event: Event) -> dict[str, Any]:
    raise KeyError("amount")
