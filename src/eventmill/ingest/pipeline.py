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
import time
from collections.abc import Sequence
from dataclasses import dataclass

from eventmill.errors import PubSubError
from eventmill.events import Event
from eventmill.ingest.context import IngestContext
from eventmill.store import StoredEvent
from eventmill.store.errors import StoreError, StoreUnavailableError
from eventmill.web.errors import PublishPendingError
from eventmill.web.seam import POSITION_KEY, STORED_MARK
from eventmill.web.tracing import TRACEPARENT_KEY, TraceContext

__all__ = [
    "Accepted",
    "ingest",
    "publish_stored",
]

_log = logging.getLogger("eventmill.ingest")

CRASH_EXIT_CODE = 70
"""Exit status of the ``crash_after_store`` fault (EX_SOFTWARE)."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The outcome for one submitted event."""

    id: str
    """The stored event's id (for a duplicate: the id of the event stored first)."""
    duplicate: bool
    """Whether the event had been stored before (and so was not published again)."""
    event: Event
    """The stored event."""


async def ingest(
    ctx: IngestContext,
    items: Sequence[tuple[Event, str | None]],
    *,
    retry_safe: bool = True,
) -> list[Accepted]:
    """Store ``(event, external_id)`` pairs in order, then publish the new ones together.

    Storing and publishing share one ``request_timeout``. Raises
    :class:`~eventmill.store.errors.StoreUnavailableError` when the store cannot commit in time
    (nothing new is then acknowledged, though what it gave up on may still commit),
    :class:`PublishPendingError` when the bus
    fails or times out after the store committed. ``retry_safe``: whether a retry of
    the request would find its events stored (each has a dedup key or a chosen id);
    the 503's message says which holds.
    """
    events = ctx.require_events()
    timeout = ctx.config.request_timeout
    accepted: list[Accepted] = []
    fresh: list[StoredEvent] = []
    stored = False
    try:
        async with asyncio.timeout(timeout):
            if ctx.inserter is not None and len(items) == 1:  # a webhook: no gather task
                results = [await ctx.inserter.insert(*items[0])]
            elif ctx.inserter is not None:
                inserter = ctx.inserter
                results = await asyncio.gather(*(inserter.insert(e, x) for e, x in items))
            else:
                results = [await events.insert(e, external_id=x) for e, x in items]
            stored = True
            for stored_event, created in results:
                accepted.append(Accepted(stored_event.event.id, not created, stored_event.event))
                if created:
                    fresh.append(stored_event)
            if fresh and ctx.config.crash_after_store:
                _log.critical("fault injection: crash_after_store, exiting before publish")
                os._exit(CRASH_EXIT_CODE)
            if fresh:
                await _send(ctx, fresh, retry_safe=retry_safe)
    except TimeoutError as exc:
        if not stored:
            message = f"the event store did not answer within {timeout:g} s"
            if not retry_safe:
                # the insert given up on may still commit (it is then published as ever)
                message += (
                    "; it may still store the events, and a retry of this request "
                    "without an Idempotency-Key could store them twice: send one to make "
                    "retries safe"
                )
            raise StoreUnavailableError(message) from None
        raise _pending(fresh, exc, retry_safe=retry_safe) from exc
    if fresh:
        await _mark(ctx, fresh, mark_now=False)
    return accepted


async def publish_stored(
    ctx: IngestContext,
    events: Sequence[StoredEvent],
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
    if deadline is None:
        deadline = asyncio.get_running_loop().time() + ctx.config.request_timeout
    try:
        async with asyncio.timeout_at(deadline):
            await _send(ctx, events)
    except TimeoutError as exc:
        raise _pending(events, exc) from exc
    await _mark(ctx, events, mark_now=mark_now)


def _ids(events: Sequence[StoredEvent]) -> str:
    return ", ".join(e.id for e in events[:3]) + (" …" if len(events) > 3 else "")


def _pending(
    events: Sequence[StoredEvent], exc: BaseException, *, retry_safe: bool = True
) -> PublishPendingError:
    ids = _ids(events)
    _log.warning("publish of %s failed (%s); the relay will retry", ids, type(exc).__name__)
    what = "event" if len(events) == 1 else "events"
    if retry_safe:
        retry = "and a retry of this request is answered as a duplicate"
    else:
        retry = (
            "but a retry of this request would store its events again (it has no "
            "Idempotency-Key and not every event has an id): send an Idempotency-Key "
            "header to make retries safe"
        )
    return PublishPendingError(
        f"{what} stored ({ids}) but the bus is unavailable; {'it' if len(events) == 1 else 'they'}"
        f" will be published when the bus is back, {retry}"
    )


async def _send(
    ctx: IngestContext, events: Sequence[StoredEvent], *, retry_safe: bool = True
) -> None:
    """Publish ``events`` (marked as stored, with their store position) in one call;
    the caller bounds the time. A bus error becomes :class:`PublishPendingError`."""
    messages = []
    for stored in events:
        msg = stored.event.to_message()
        msg.metadata[STORED_MARK] = "1"
        msg.metadata[POSITION_KEY] = str(stored.position)
        hop = TraceContext.from_trace_id(stored.event.metadata.trace_id)
        if hop is not None:
            msg.metadata[TRACEPARENT_KEY] = hop.header
        messages.append(msg)
    bus, topic, metrics = ctx.require_bus(), ctx.config.topic, ctx.bus_metrics
    started = time.perf_counter()
    try:
        await bus.publish(topic, *messages)
    except BaseException as exc:
        if metrics is not None:
            metrics.failed(topic)
        if isinstance(exc, PubSubError | OSError):  # OSError: a client error left untranslated
            raise _pending(events, exc, retry_safe=retry_safe) from exc
        raise
    if metrics is not None:
        metrics.published(topic, started)
    store = ctx.resources.store
    if store is not None:
        store.journal.hops_many([s.event.id for s in events], "published", topic=topic)


async def _mark(ctx: IngestContext, events: Sequence[StoredEvent], *, mark_now: bool) -> None:
    ids_list = [e.id for e in events]
    if not mark_now and ctx.marker is not None and ctx.marker.add(ids_list):
        return
    try:
        await ctx.require_events().mark_published(ids_list)
    except StoreError as exc:
        _log.warning("published %s but could not mark it: %s", _ids(events), exc)
