"""The fan-out: a Router handler on topic ``events`` (group ``delivery``) that records
one delivery per (event, matching endpoint) in the store before the event is acked.

Events the handler's workers take at once are matched and recorded together: one
read of the endpoints, one write transaction for all their deliveries. The delivery
rows are unique on (event, endpoint), so a redelivered event records nothing twice.
Deliveries due at once are, when this process's dispatcher has room for them,
inserted already leased to it and handed straight over (no claim round trip); the
others wait in the store for whichever dispatcher claims them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from eventmill.delivery._ids import new_id
from eventmill.delivery.config import DeliverySettings
from eventmill.delivery.dispatcher import Dispatcher, Job
from eventmill.delivery.metrics import DeliveryMetrics
from eventmill.delivery.store import Claimed, DeliveryStore, FanoutEvent, NewDelivery
from eventmill.errors import EventValidationError
from eventmill.events import Event
from eventmill.message import Message

__all__ = ["FanOut"]

_log = logging.getLogger("eventmill.delivery.fanout")


def _event_of(msg: Message) -> FanoutEvent | None:
    name = msg.metadata.get("event_name")
    if name is not None:
        return FanoutEvent(msg.id, name, msg.metadata.get("user_id"), msg.payload)
    try:
        event = Event.from_message(msg)
    except EventValidationError as exc:
        _log.warning("message %s on the events topic is not an event: %s", msg.id, exc)
        return None
    return FanoutEvent(event.id, event.event_name, event.user_id, msg.payload)


class FanOut:
    """Batches the handler's messages and records their deliveries (``run()`` loops)."""

    def __init__(
        self,
        store: DeliveryStore,
        settings: DeliverySettings,
        metrics: DeliveryMetrics,
        dispatcher: Dispatcher | None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.dispatcher = dispatcher
        self._pending: list[tuple[Message, asyncio.Future[None]]] = []
        self._signal = asyncio.Event()

    async def handle(self, msg: Message) -> None:
        """The Router handler: returns once the message's deliveries are committed
        (bounded by the handler's concurrency: that many messages wait at most)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((msg, future))
        self._signal.set()
        await future

    async def run(self) -> None:
        """Record the waiting messages' deliveries, batch after batch, until cancelled."""
        while True:
            await self._signal.wait()
            self._signal.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                await self._record([m for m, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _record(self, messages: list[Message]) -> None:
        events: dict[str, FanoutEvent] = {}
        for msg in messages:
            event = _event_of(msg)
            if event is not None:
                events.setdefault(event.event_id, event)
        if not events:
            return
        users = {e.user_id for e in events.values() if e.user_id is not None}
        endpoints = await self.store.matching_endpoints(users)
        if not endpoints:
            return
        s = self.settings
        now = datetime.now(UTC)
        first = s.retry_schedule[0]
        matches: dict[str, list[FanoutEvent]] = defaultdict(list)
        by_id = {ep.id: ep for ep in endpoints}
        for event in events.values():
            for ep in endpoints:
                if (ep.user_id is None or ep.user_id == event.user_id) and ep.matches(
                    event.event_name
                ):
                    matches[ep.id].append(event)
        if not matches:
            return
        token = new_id("ls")[3:]
        dispatcher = self.dispatcher if first == 0 else None
        reserved: dict[str, int] = {}
        rows: list[NewDelivery] = []
        lease_end = now + timedelta(seconds=s.lease_seconds)
        deadline = time.monotonic() + s.lease_seconds
        for endpoint_id, matched in matches.items():
            n = dispatcher.reserve(by_id[endpoint_id], len(matched)) if dispatcher else 0
            reserved[endpoint_id] = n
            for i, event in enumerate(matched):
                leased = i < n
                if leased:
                    due = lease_end
                else:
                    due = now + timedelta(
                        seconds=first * random.uniform(1 - s.jitter, 1 + s.jitter)
                    )
                rows.append(
                    NewDelivery(
                        id=new_id("dlv"),
                        event_id=event.event_id,
                        endpoint_id=endpoint_id,
                        user_id=by_id[endpoint_id].user_id,
                        event_name=event.event_name,
                        next_attempt_at=due,
                        token=token if leased else None,
                    )
                )
        used = {e.event_id for ms in matches.values() for e in ms}
        try:
            created = await self.store.record_fanout([events[i] for i in used], rows)
        except BaseException:
            if dispatcher is not None:
                for endpoint_id, n in reserved.items():
                    dispatcher.unreserve(endpoint_id, n)
            raise
        self.metrics.recorded.inc(len(created))
        if dispatcher is None:
            if created and self.dispatcher is not None:
                self.dispatcher.wake()
            return
        jobs: dict[str, list[Job]] = defaultdict(list)
        waiting = False
        for row in created:
            if row.token is None:
                waiting = True
                continue
            claimed = Claimed(row.id, row.event_id, row.endpoint_id, row.event_name, 0, 0, token)
            jobs[row.endpoint_id].append(Job(claimed, deadline, events[row.event_id].body))
        for endpoint_id, n in reserved.items():
            if n:
                dispatcher.hand_over(endpoint_id, jobs.get(endpoint_id, []), n)
        if waiting:
            dispatcher.wake()
