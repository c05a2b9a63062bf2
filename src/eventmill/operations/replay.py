"""Replay: publish stored events again, in store order, onto a topic.

A consumer that joins late, or one whose data was lost, catches up from the store: the
events matching a filter, from a position or a time, are read page by page in position
order and published to ``topic``. Each replayed message carries the event's store
position (``eventmill_position``), ``eventmill_stored: "1"`` (the audit handler does
not store it again) and ``eventmill_replayed: "1"``; its id is the event id, so a
consumer that saw it before drops it as a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from eventmill.pubsub.base import Publisher
from eventmill.store import EventStore
from eventmill.web.seam import POSITION_KEY, STORED_MARK

__all__ = ["REPLAYED_MARK", "ReplayResult", "replay"]

REPLAYED_MARK = "eventmill_replayed"
"""Metadata key (value ``"1"``) on messages published by a replay."""


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay published."""

    published: int
    """How many events were published."""
    last_position: int | None
    """The position of the last one (pass it as ``after_position`` to continue)."""
    complete: bool
    """Whether every matching event was published (``False`` when ``limit`` stopped it)."""


async def replay(
    events: EventStore,
    bus: Publisher,
    *,
    topic: str = "events",
    after_position: int = 0,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: str | None = None,
    event_name: str | None = None,
    source: str | None = None,
    limit: int | None = None,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Publish the stored events matching every filter given, oldest first.

    ``after_position``: only events stored after this position (0: from the start).
    ``since`` / ``until``: the events' ``created_at`` range. ``event_name`` may be a
    pattern with ``*``. ``limit``: publish at most this many (``None``: all).
    ``progress`` is called with the running count after each batch. Each batch is one
    ``publish`` call, so it returns only once the bus accepted it.
    """
    published = 0
    last: int | None = None
    cursor = events.cursor_for(after_position) if after_position > 0 else None
    while limit is None or published < limit:
        size = batch_size if limit is None else min(batch_size, limit - published)
        page = await events.query(
            user_id=user_id,
            event_name=event_name,
            source=source,
            since=since,
            until=until,
            after=cursor,
            limit=size,
        )
        if not page.events:
            return ReplayResult(published, last, True)
        messages = []
        for stored in page.events:
            msg = stored.event.to_message()
            msg.metadata[STORED_MARK] = "1"
            msg.metadata[POSITION_KEY] = str(stored.position)
            msg.metadata[REPLAYED_MARK] = "1"
            messages.append(msg)
        await bus.publish(topic, *messages)
        published += len(messages)
        last = page.events[-1].position
        cursor = page.next_cursor
        if progress is not None:
            progress(published)
        if not page.has_more:
            return ReplayResult(published, last, True)
    return ReplayResult(published, last, False)
