"""The durable ingest path: store (with dedup) → publish → mark published.

:func:`ingest` is what every receiver and the publish API call once a request is
verified and its events built. Its guarantee: when it returns, every event is
committed to the store, and every *newly* stored one has been accepted by the bus.
A duplicate (same source and external id, or same event id) is answered with the
event stored first and is not published again. If the bus fails after the store
committed, :class:`PublishPendingError` (→ 503) is raised: the event is durable and
the outbox relay publishes it later, and the provider's retry is a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from eventmill.errors import (
    BackendUnavailableError,
    PubSubError,
    StoreError,
    StoreUnavailableError,
)
from eventmill.events import Event
from eventmill.ingest.context import IngestContext

__all__ = [
    "STORED_MARK",
    "Accepted",
    "PublishMarker",
    "PublishPendingError",
    "ingest",
    "publish_stored",
]

_log = logging.getLogger("eventmill.ingest")

CRASH_EXIT_CODE = 70
"""Exit status of the ``crash_after_store`` fault (EX_SOFTWARE)."""

STORED_MARK = "eventmill_stored"
"""Metadata key (value ``"1"``) on messages the ingest path publishes: the event is in
the store already, so the audit handler skips it."""


class PublishPendingError(BackendUnavailableError):
    """The events are stored but the bus did not accept them; the relay will publish them."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The outcome for one submitted event."""

    id: str
    """The stored event's id (for a duplicate: the id of the event stored first)."""
    duplicate: bool
    """Whether the event had been stored before (and so was not published again)."""
    event: Event
    """The stored event."""


async def ingest(ctx: IngestContext, items: Sequence[tuple[Event, str | None]]) -> list[Accepted]:
    """Store ``(event, external_id)`` pairs in order, then publish the new ones together.

    Raises :class:`~eventmill.StoreUnavailableError` when the store cannot commit
    (nothing new is then acknowledged), :class:`PublishPendingError` when the bus
    fails after the store committed.
    """
    events = ctx.require_events()
    timeout = ctx.config.request_timeout
    deadline = asyncio.get_running_loop().time() + timeout
    accepted: list[Accepted] = []
    fresh: list[Event] = []
    try:
        async with asyncio.timeout_at(deadline):
            if ctx.inserter is not None:
                inserter = ctx.inserter
                results = await asyncio.gather(*(inserter.insert(e, x) for e, x in items))
            else:
                results = [await events.insert(e, external_id=x) for e, x in items]
    except TimeoutError:
        raise StoreUnavailableError(
            f"the event store did not answer within {timeout:g} s"
        ) from None
    for stored, created in results:
        accepted.append(Accepted(stored.event.id, not created, stored.event))
        if created:
            fresh.append(stored.event)
    if fresh and ctx.config.crash_after_store:
        _log.critical("fault injection: crash_after_store, exiting before publish")
        os._exit(CRASH_EXIT_CODE)
    if fresh:
        await publish_stored(ctx, fresh, deadline=deadline)
    return accepted


async def publish_stored(
    ctx: IngestContext,
    events: Sequence[Event],
    *,
    deadline: float | None = None,
    mark_now: bool = False,
) -> None:
    """Publish stored events to the topic in one call, then mark them published.

    ``deadline`` (event-loop time) bounds the publish (default: ``request_timeout``
    from now). Marking goes through the batching :class:`PublishMarker` unless
    ``mark_now`` (the relay needs its marks written before its next query). Raises
    :class:`PublishPendingError` when the bus is down or does not accept them in time.
    Failing to *mark* them is only logged: they are on the bus, and the relay may
    publish them once more (receivers drop duplicates by id).
    """
    cfg = ctx.config
    ids = ", ".join(e.id for e in events[:3]) + (" …" if len(events) > 3 else "")
    messages = []
    for event in events:
        msg = event.to_message()
        msg.metadata[STORED_MARK] = "1"
        messages.append(msg)
    try:
        bus = ctx.require_bus()
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + cfg.request_timeout
        async with asyncio.timeout_at(deadline):
            await bus.publish(cfg.topic, *messages)
    except (PubSubError, TimeoutError) as exc:
        _log.warning("publish of %s failed (%s); the relay will retry", ids, type(exc).__name__)
        raise PublishPendingError(
            f"event stored ({ids}) but the bus is unavailable; it will be published "
            "when the bus is back, and a retry of this request is answered as a duplicate"
        ) from exc
    ids_list = [e.id for e in events]
    if not mark_now and ctx.marker is not None and ctx.marker.add(ids_list):
        return
    try:
        await ctx.require_events().mark_published(ids_list)
    except StoreError as exc:
        _log.warning("published %s but could not mark it: %s", ids, exc)


class PublishMarker:
    """Marks published events in the store in batches (one UPDATE for many requests).

    :meth:`add` queues ids and returns at once; :meth:`run` writes everything queued
    in one ``mark_published`` call per round. At most ``max_pending`` ids wait; when
    full, :meth:`add` refuses (returns ``False``) and the caller marks its ids itself.
    An id that is never marked (crash, store down) is published again by the relay:
    at-least-once, receivers drop duplicates by id.
    """

    def __init__(self, ctx: IngestContext, *, max_pending: int = 10_000) -> None:
        self._ctx = ctx
        self._max = max_pending
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._closed = False

    def add(self, ids: Sequence[str]) -> bool:
        """Queue ``ids``; ``False`` if the queue is full or closed (mark them yourself)."""
        if self._closed or len(self._pending) + len(ids) > self._max:
            return False
        self._pending.extend(ids)
        self._wake.set()
        return True

    async def flush(self) -> None:
        """Mark everything queued now (errors are logged; the relay covers them)."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await self._ctx.require_events().mark_published(batch)
        except StoreError as exc:
            _log.warning("could not mark %d published event(s): %s", len(batch), exc)

    async def run(self) -> None:
        """Flush whenever ids are queued, until :meth:`close`."""
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        """Stop accepting ids and flush what is queued."""
        self._closed = True
        self._wake.set()
        await self.flush()
