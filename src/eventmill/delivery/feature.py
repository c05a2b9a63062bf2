"""The delivery feature as the composition root sees it: routes, settings, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from fastapi import APIRouter

from eventmill.delivery import api
from eventmill.delivery.builders import PayloadBuilders, builders_from
from eventmill.delivery.config import DeliverySettings
from eventmill.delivery.dispatcher import Dispatcher
from eventmill.delivery.fanout import FANOUT_GROUP, FanOut
from eventmill.delivery.metrics import DeliveryMetrics
from eventmill.delivery.network import Resolver
from eventmill.delivery.store import DeliveryStore
from eventmill.errors import RouterError
from eventmill.router import Router, RouterConfig
from eventmill.store import Store
from eventmill.web.seam import FeatureRoles, Resources

__all__ = ["FANOUT_GROUP", "Delivery"]

_log = logging.getLogger("eventmill.delivery")


class Delivery:
    """Outbound webhooks: the ``/v1/endpoints`` and ``/v1/deliveries`` routes; the
    fan-out handler and the dispatcher run while the feature's lifespan is entered."""

    name = "delivery"
    roles = FeatureRoles(routes="api", workers="delivery")

    def __init__(
        self,
        settings: DeliverySettings,
        resources: Resources,
        *,
        builders: PayloadBuilders | None = None,
        resolver: Resolver | None = None,
        shutdown_grace: float | None = None,
    ) -> None:
        self.settings = settings
        self.shutdown_grace = shutdown_grace
        """At most how long stopping waits for the fan-out's handlers and the attempts
        in flight (``shutdown_grace_seconds``); an attempt cut short is sent again once
        its lease expires. ``None``: up to the attempt timeout."""
        self.resources = resources
        self.builders = builders if builders is not None else builders_from(settings.builders)
        """Payload builders by event-name pattern (register more before start)."""
        self.metrics = DeliveryMetrics(resources.metrics)
        self._resolver = resolver
        self._store: tuple[Store, DeliveryStore] | None = None
        self._router = APIRouter()
        self._router.routes.extend(api.routes(settings, self.store).routes)
        self.dispatcher: Dispatcher | None = None
        self._problems: dict[str, str] = {}

    def store(self) -> DeliveryStore:
        """The delivery store over the open store (→ 503 while it is not open)."""
        store = self.resources.require_store()
        if self._store is None or self._store[0] is not store:
            self._store = (store, DeliveryStore(store))
        return self._store[1]

    @property
    def router(self) -> APIRouter:
        """Every HTTP route of delivery."""
        return self._router

    def health(self) -> Mapping[str, str]:
        """Problems of the fan-out and the dispatcher."""
        problems = dict(self._problems)
        if self.dispatcher is not None:
            problems.update(self.dispatcher.problems)
        return problems

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Start the dispatcher and the fan-out (its subscription open before this
        returns); on exit stop the fan-out, then the dispatcher (attempts in flight
        finish, queued deliveries are given back)."""
        if not self.settings.enabled:
            yield
            return
        resources = self.resources
        bus = resources.require_bus()
        store = self.store()
        dispatcher = Dispatcher(
            store,
            self.settings,
            self.builders,
            self.metrics,
            resources.require_bus,
            topic=resources.topic,
            resolver=self._resolver,
        )
        await dispatcher.start()
        self.dispatcher = dispatcher
        fanout = FanOut(store, self.settings, self.metrics, dispatcher)
        tasks = [asyncio.create_task(fanout.run())]
        grace = self.shutdown_grace
        close_timeout = 10.0 if grace is None else min(10.0, grace)
        router = Router(subscriber=bus, config=RouterConfig(close_timeout=close_timeout))
        router.add_handler(
            "delivery-fanout",
            resources.topic,
            fanout.handle,
            group=FANOUT_GROUP,
            concurrency=self.settings.fanout_concurrency,
        )
        tasks.append(asyncio.create_task(router.run()))
        try:
            try:
                await router.running()
            except RouterError as exc:
                reason = exc.__cause__ or exc
                self._problems["fanout"] = f"the fan-out handler could not start: {reason}"
                _log.error("the delivery fan-out could not start: %s", reason)
            yield
        finally:
            with contextlib.suppress(Exception):
                await router.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await dispatcher.close(
                None if grace is None else min(grace, self.settings.timeout_seconds + 1)
            )
            self.dispatcher = None
