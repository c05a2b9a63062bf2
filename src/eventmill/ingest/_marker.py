"""Marking published events in the store in batches, across requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from eventmill.store import EventStore
from eventmill.store.errors import StoreError

__all__ = ["PublishMarker"]

_log = logging.getLogger("eventmill.ingest")


class PublishMarker:
    """Marks published events in the store in batches (one UPDATE for many requests).

    :meth:`add` queues ids and returns at once; :meth:`run` writes everything queued
    in one ``mark_published`` call per round, and after a round waits ``min_interval``
    seconds (default 0.05) before the next one, so under load the marks of many
    requests share one write instead of contending with the inserts for the store's
    writer. At most ``max_pending`` ids wait; when full, :meth:`add` refuses (returns
    ``False``) and the caller marks its ids itself.
    An id that is never marked (crash, store down) is published again by the relay:
    at-least-once, receivers drop duplicates by id.
    """

    def __init__(
        self,
        events: Callable[[], EventStore],
        *,
        max_pending: int = 10_000,
        min_interval: float = 0.05,
    ) -> None:
        self._events = events
        self._max = max_pending
        self._min_interval = min_interval
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
            await self._events().mark_published(batch)
        except StoreError as exc:
            _log.warning("could not mark %d published event(s): %s", len(batch), exc)

    async def run(self) -> None:
        """Flush whenever ids are queued, until :meth:`close`."""
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
            if self._min_interval > 0:
                await asyncio.sleep(self._min_interval)  # ids queued meanwhile: next round

    async def close(self) -> None:
        """Stop accepting ids and flush what is queued."""
        self._closed = True
        self._wake.set()
        await self.flush()
