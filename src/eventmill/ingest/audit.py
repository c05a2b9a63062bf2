"""The audit handler: stores every event that crosses topic ``events``.

Run as a Router handler in group ``audit``. Events published by the ingest path are
already stored and carry the metadata ``eventmill_stored: "1"``, so they are skipped;
events a microservice published with
the library directly are stored here, marked published, so the store holds every
event that crossed the bus. A message that is not a valid event is logged and acked
(it can never become valid; redelivering it forever would block the group). A store
failure raises, so the message is nacked and redelivered.

:class:`AuditSubscriber` opens the handler's subscription so that a bus which can
pass over messages by metadata (the ``SkippingSubscriber`` capability, sqlite://) does
not hand the skipped ones out at all.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from eventmill.errors import EventValidationError
from eventmill.events import Event
from eventmill.ingest.context import IngestContext
from eventmill.message import Message
from eventmill.pubsub.base import SkippingSubscriber, Subscriber, Subscription
from eventmill.web.seam import STORED_MARK

__all__ = ["AuditSubscriber", "audit_handler"]

_log = logging.getLogger("eventmill.ingest.audit")


def audit_handler(ctx: IngestContext) -> Callable[[Message], Awaitable[None]]:
    """Return the Router handler that stores events idempotently by id."""

    async def audit(msg: Message) -> None:
        if msg.metadata.get(STORED_MARK) == "1":
            return  # published by the ingest path after it stored the event
        try:
            event = Event.from_message(msg)
        except EventValidationError as exc:
            _log.warning("audit: message %s on the events topic is not an event: %s", msg.id, exc)
            return
        _, created = await ctx.require_events().insert_if_absent_by_id(event, published=True)
        if created:
            _log.debug(
                "audit: stored %s (%s) published by another path", event.id, event.event_name
            )

    return audit


class AuditSubscriber:
    """The audit handler's :class:`~eventmill.Subscriber`: ``bus``, except that on a
    bus with the :class:`~eventmill.pubsub.base.SkippingSubscriber` capability a group
    subscription skips the messages marked ``eventmill_stored`` in the bus itself
    (they count as acked by the group, never leased nor handed out). Messages without
    the mark, i.e. from other paths, are delivered as before. ``close()`` closes
    nothing: the bus has its owner, and the Router closes the subscriptions it opened.
    """

    def __init__(self, bus: Subscriber) -> None:
        self._bus = bus

    async def subscribe(self, topic: str, *, group: str | None = None) -> Subscription:
        bus = self._bus
        if isinstance(bus, SkippingSubscriber) and group is not None:
            return await bus.subscribe_skipping(topic, group=group, skip=(STORED_MARK, "1"))
        return await bus.subscribe(topic, group=group)

    async def close(self) -> None:
        return None
