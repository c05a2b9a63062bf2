"""The outbox relay: publishes events that were stored but not published.

An event is stored before it is published; if the process dies (or the bus fails)
between the two, the event stays unpublished in the store. The relay publishes such
events, oldest first, on start and then every ``interval`` seconds, and marks them
published. On start it takes every event stored before the relay was created (the
requests served since then publish their own events); afterwards only those older
than ``grace`` seconds, so it does not race a request that is about to publish an
event it just stored. Delivery is at-least-once: an
event may be published twice if marking fails, and receivers drop duplicates by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from eventmill.errors import EventmillError
from eventmill.ingest.context import IngestContext
from eventmill.ingest.pipeline import publish_stored

__all__ = ["OutboxRelay"]

_log = logging.getLogger("eventmill.ingest.relay")


class OutboxRelay:
    """Publishes stored-but-unpublished events; see the module docstring."""

    def __init__(
        self,
        ctx: IngestContext,
        *,
        interval: float = 5.0,
        grace: float = 10.0,
        batch_size: int = 500,
    ) -> None:
        self._ctx = ctx
        self._interval = interval
        self._grace = grace
        self._batch_size = batch_size
        self._stop = asyncio.Event()
        self._created = time.time()
        self.published = 0
        """How many events this relay has published (for tests and metrics)."""

    async def run_once(self, *, older_than: float) -> int:
        """Publish unpublished events older than ``older_than`` seconds; return how many.

        Works in batches of ``batch_size`` until none is left. Raises the store's or
        the bus's error (:class:`~eventmill.EventmillError`) if either fails.
        """
        events = self._ctx.require_events()
        total = 0
        while True:
            rows = await events.unpublished(limit=self._batch_size, older_than=older_than)
            if not rows:
                return total
            await publish_stored(self._ctx, rows, mark_now=True)
            total += len(rows)
            self.published += len(rows)
            _log.info("relay published %d stored event(s)", len(rows))
            if len(rows) < self._batch_size:
                return total

    async def run(self) -> None:
        """Run the start-up pass, then a pass every ``interval`` seconds until :meth:`stop`."""
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    await self.run_once(older_than=max(0.0, time.time() - self._created))
                    first = False
                else:
                    await self.run_once(older_than=self._grace)
            except EventmillError as exc:
                _log.warning("relay pass failed (will retry): %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the pass in progress."""
        self._stop.set()
