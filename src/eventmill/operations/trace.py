"""Trace: every hop of one event, from the store's records and the journal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from eventmill.store import Store, StoredEvent

__all__ = ["Trace", "TraceHop", "trace"]


@dataclass(frozen=True, slots=True)
class TraceHop:
    """One hop: when, what, and what is known about it."""

    at: datetime
    hop: str
    """``stored``, ``published``, ``handled``, ``delivery.attempt``, ``pushed``, …"""
    detail: dict[str, object]


@dataclass(frozen=True, slots=True)
class Trace:
    """An event and its hops, oldest first."""

    event: StoredEvent
    hops: list[TraceHop]


async def trace(store: Store, event_id: str) -> Trace | None:
    """The trace of ``event_id``, or ``None`` when no such event is stored.

    ``stored`` and ``published`` come from the event's own row; every other hop from
    the journal (features record them: handled by a group, delivery attempts, pushes to
    realtime connections). Journal entries are written within about a second.
    """
    stored = await store.events.get(event_id)
    if stored is None:
        return None
    hops = [
        TraceHop(
            stored.stored_at,
            "stored",
            {
                "position": stored.position,
                "source": stored.event.source,
                "external_id": stored.external_id,
            },
        )
    ]
    if stored.published_at is not None:
        hops.append(TraceHop(stored.published_at, "published", {}))
    for hop in await store.journal.hops(event_id):
        hops.append(TraceHop(hop.at, hop.hop, hop.detail))
    hops.sort(key=lambda h: h.at)
    return Trace(stored, hops)
