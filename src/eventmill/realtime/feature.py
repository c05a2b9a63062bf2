"""The realtime feature as the composition root sees it: routes, settings, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from fastapi import APIRouter

from eventmill.realtime import pages, sse, websocket
from eventmill.realtime.codes import CloseCode
from eventmill.realtime.config import RealtimeSettings
from eventmill.realtime.context import RealtimeContext
from eventmill.realtime.feed import Feed
from eventmill.realtime.hub import Hub
from eventmill.realtime.shutdown import before_server_exit
from eventmill.web.seam import FeatureRoles, Resources

__all__ = ["Realtime"]

_log = logging.getLogger("eventmill.realtime")


class Realtime:
    """WebSocket ``/ws``, SSE ``/sse``, the JS client and the dashboard; the hub runs
    while the feature's lifespan is entered."""

    name = "realtime"
    roles = FeatureRoles(routes="realtime", workers="realtime")

    def __init__(self, settings: RealtimeSettings, resources: Resources) -> None:
        self.settings = settings
        self.context = RealtimeContext(settings=settings, resources=resources)
        self._router = APIRouter()
        if settings.enabled:
            self._router.routes.extend(websocket.routes(self.context))
            self._router.routes.extend(sse.routes(self.context).routes)
            self._router.routes.extend(pages.routes())

    @property
    def router(self) -> APIRouter:
        """Every HTTP route of realtime."""
        return self._router

    @property
    def hub(self) -> Hub | None:
        """The running hub (``None`` outside the lifespan)."""
        return self.context.hub

    def health(self) -> Mapping[str, str]:
        """Problems of the hub (its bus subscription, its store reads)."""
        hub = self.context.hub
        return {} if hub is None else hub.health()

    async def close_connections(self, code: int = CloseCode.GOING_AWAY) -> None:
        """Close every connection with ``code`` (default 1001) and wait, at most
        ``close_grace_seconds``, until they are gone."""
        hub = self.context.hub
        if hub is None:
            return
        hub.close_all(code, "server_shutting_down")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.close_grace_seconds):
                await hub.emptied()

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the hub (its subscription open and its position read before this
        returns); on exit close every client with 1001, then stop the hub."""
        if not self.settings.enabled:
            yield
            return
        resources = self.context.resources
        store = resources.require_store()
        hub = Hub(Feed(store), self.settings, resources.metrics, store.journal)
        async with hub.running(resources.require_bus(), resources.topic):
            self.context.hub = hub
            try:
                with before_server_exit(self.close_connections, self.settings.close_grace_seconds):
                    yield
            finally:
                await self.close_connections()
                self.context.hub = None
