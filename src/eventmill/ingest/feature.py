"""The ingest feature as the composition root sees it: routes, settings, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from fastapi import APIRouter

from eventmill.errors import ConfigurationError, RouterError
from eventmill.events import transformer_for
from eventmill.ingest import api, webhooks
from eventmill.ingest._group_commit import GroupCommitInserter
from eventmill.ingest._marker import PublishMarker
from eventmill.ingest.audit import AuditSubscriber, audit_handler
from eventmill.ingest.config import IngestSettings, receiver_for
from eventmill.ingest.context import IngestConfig, IngestContext, Receiver
from eventmill.ingest.idempotency import cleanup_loop
from eventmill.ingest.metrics import IngestMetrics
from eventmill.ingest.relay import OutboxRelay
from eventmill.ingest.signatures import RazorpayScheme
from eventmill.router import HandlerMetrics, Router, RouterConfig
from eventmill.web.metrics import bus_metrics
from eventmill.web.seam import FeatureRoles, Resources

__all__ = ["Ingest", "ingest_config"]

_log = logging.getLogger("eventmill.ingest")


def ingest_config(settings: IngestSettings, resources: Resources) -> IngestConfig:
    """The runtime configuration of ingest: receivers built from the settings.

    Raises :class:`~eventmill.ConfigurationError` naming the setting a receiver cannot be
    built from (``sources.<name>``, ``razorpay_webhook_secret``; never a secret).
    """
    receivers: dict[str, Receiver] = {}
    for name, cfg in settings.sources.items():
        try:
            receivers[name] = receiver_for(cfg)
        except ConfigurationError as exc:
            raise ConfigurationError(f"sources.{name}: {exc}") from None
    if settings.razorpay_webhook_secret:
        paths = settings.razorpay_user_id_paths
        secrets = [s.get_secret_value() for s in settings.razorpay_webhook_secret]
        try:
            scheme = RazorpayScheme(secrets)
        except ConfigurationError as exc:
            raise ConfigurationError(f"razorpay_webhook_secret: {exc}") from None
        receivers["razorpay"] = Receiver(
            scheme=scheme,
            transformer=transformer_for("razorpay", tuple(paths) if paths is not None else None),
        )
    return IngestConfig(
        topic=resources.topic,
        max_body_bytes=settings.max_body_bytes,
        request_timeout=settings.request_timeout_seconds,
        receivers=receivers,
        registry=resources.registry,
        idempotency_ttl=settings.idempotency_ttl_seconds,
        crash_after_store=settings.fault == "crash_after_store",
    )


class Ingest:
    """Webhook receivers and the publish/query API; the outbox relay and the audit
    handler run while the feature's lifespan is entered."""

    name = "ingest"
    roles = FeatureRoles(routes="ingest", workers="ingest")

    def __init__(self, settings: IngestSettings, resources: Resources) -> None:
        self.settings = settings
        self.context = IngestContext(
            config=ingest_config(settings, resources),
            resources=resources,
            metrics=IngestMetrics(resources.metrics),
            bus_metrics=bus_metrics(resources.metrics),
        )
        self._router = APIRouter()
        # The sub-routers' routes themselves (each already carries its prefix and tags),
        # not the sub-routers: one level less of router nesting on every request.
        for sub in (webhooks.routes(self.context), api.routes(self.context)):
            self._router.routes.extend(sub.routes)
        self.relay: OutboxRelay | None = None
        self._problems: dict[str, str] = {}
        self._metrics: HandlerMetrics | None = None

    def _handler_metrics(self) -> HandlerMetrics:
        """The handler metrics on the app's registry (created once per app)."""
        if self._metrics is None:
            self._metrics = HandlerMetrics(self.context.resources.metrics)
        return self._metrics

    @property
    def router(self) -> APIRouter:
        """Every HTTP route of ingest."""
        return self._router

    def health(self) -> Mapping[str, str]:
        """Problems of ingest's workers (the audit handler failing to start)."""
        return dict(self._problems)

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the relay, the group-commit inserter, the publish marker, the deletion of
        expired idempotency keys and the audit handler (its subscription open before
        this returns); stop them on exit."""
        ctx, s = self.context, self.settings
        store = ctx.resources.require_store()
        bus = ctx.resources.require_bus()
        relay = OutboxRelay(
            ctx,
            interval=s.relay_interval_seconds,
            grace=s.relay_grace_seconds,
            batch_size=s.relay_batch_size,
        )
        self.relay = relay
        inserter = GroupCommitInserter(store)
        marker = PublishMarker(ctx.require_events)
        ctx.inserter, ctx.marker = inserter, marker
        workers = (relay.run(), inserter.run(), marker.run(), cleanup_loop(ctx))
        tasks = [asyncio.create_task(w) for w in workers]
        router: Router | None = None
        try:
            if s.audit_enabled:
                router = Router(
                    subscriber=AuditSubscriber(bus), publisher=bus, config=RouterConfig()
                )
                metrics = self._handler_metrics()
                router.add_handler(
                    "audit",
                    ctx.config.topic,
                    audit_handler(ctx),
                    group="audit",
                    middleware=[metrics, metrics.attempts],
                )
                tasks.append(asyncio.create_task(router.run()))
                try:
                    await router.running()
                except RouterError as exc:
                    reason = exc.__cause__ or exc
                    self._problems["audit"] = f"the audit handler could not start: {reason}"
                    _log.error("the audit handler could not start: %s", reason)
            yield
        finally:
            if router is not None:
                with contextlib.suppress(Exception):
                    await router.close()
            relay.stop()
            ctx.inserter = None
            await inserter.close()
            ctx.marker = None
            with contextlib.suppress(Exception):
                await marker.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
