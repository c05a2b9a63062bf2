"""The composition root: ``create_app(settings)`` builds the eventmill ASGI application.

The lifespan opens the bus (:func:`eventmill.open_pubsub`) and the event store,
then starts the outbox relay and the audit handler (a Router handler in group
``audit`` on topic ``events``). A bus or store that cannot be reached on start does
not stop the service: it is retried in the background, ``/readyz`` answers 503
naming it, and ingest routes answer 503 until it is back (providers retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from eventmill import __version__
from eventmill.errors import EventmillError, RouterError
from eventmill.events import EventRegistry, transformer_for
from eventmill.ingest import (
    IngestConfig,
    IngestContext,
    OutboxRelay,
    PublishMarker,
    RazorpayScheme,
    Receiver,
    audit_handler,
    receiver_for,
)
from eventmill.ingest import router as ingest_router
from eventmill.ingest._group_commit import GroupCommitInserter
from eventmill.ingest.audit import AuditSubscriber
from eventmill.pubsub.base import PubSub
from eventmill.pubsub.factory import open_pubsub, redact_url
from eventmill.router import Router, RouterConfig
from eventmill.settings import Settings
from eventmill.store import ApiKeyStore, Store, open_store
from eventmill.web.errors import install_error_handlers

__all__ = ["EVENTS_TOPIC", "create_app", "open_key_store"]

EVENTS_TOPIC = "events"
_log = logging.getLogger("eventmill.app")
_RECONNECT_MAX_SECONDS = 10.0
_FIRST_ATTEMPT_SECONDS = 30.0


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"
    version: str = __version__


class ComponentState(BaseModel):
    """Whether one dependency is usable."""

    ok: bool
    url: str
    """The component's URL, password redacted."""
    error: str | None = None
    """Why it is not usable (last connection error)."""


class Readiness(BaseModel):
    """Readiness: the bus and the store are both usable."""

    status: Literal["ready", "unavailable"]
    bus: ComponentState
    store: ComponentState


def _ingest_config(settings: Settings) -> IngestConfig:
    receivers = {name: receiver_for(cfg) for name, cfg in settings.sources.items()}
    if settings.razorpay_webhook_secret:
        paths = settings.razorpay_user_id_paths
        receivers["razorpay"] = Receiver(
            scheme=RazorpayScheme([s.get_secret_value() for s in settings.razorpay_webhook_secret]),
            transformer=transformer_for("razorpay", tuple(paths) if paths is not None else None),
        )
    return IngestConfig(
        topic=EVENTS_TOPIC,
        max_body_bytes=settings.max_body_bytes,
        request_timeout=settings.request_timeout_seconds,
        receivers=receivers,
        registry=EventRegistry.default(allow_unknown=settings.accept_unknown_events),
        crash_after_store=settings.fault == "crash_after_store",
    )


async def _connect(
    what: str,
    url: str,
    opener: Callable[[], Awaitable[Any]],
    on_open: Callable[[Any], None],
    errors: dict[str, str],
    stop: asyncio.Event,
    attempted: asyncio.Event,
) -> None:
    """Open a component, retrying with capped backoff until it opens or ``stop`` is set.

    ``attempted`` is set once the first attempt has succeeded or failed.
    """
    delay = 0.5
    while not stop.is_set():
        try:
            resource = await opener()
        except (EventmillError, OSError) as exc:
            errors[what] = str(exc)
            _log.warning("%s at %s is unavailable: %s (retrying)", what, redact_url(url), exc)
        else:
            errors.pop(what, None)
            on_open(resource)
            _log.info("%s open at %s", what, redact_url(url))
            attempted.set()
            return
        attempted.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, _RECONNECT_MAX_SECONDS)


class _Runtime:
    """What the lifespan opens and closes; the routes reach it through ``IngestContext``."""

    def __init__(self, settings: Settings, ctx: IngestContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.errors: dict[str, str] = {}
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.router: Router | None = None
        self.relay: OutboxRelay | None = None

    async def start(self) -> None:
        s = self.settings
        self.relay = OutboxRelay(
            self.ctx,
            interval=s.relay_interval_seconds,
            grace=s.relay_grace_seconds,
            batch_size=s.relay_batch_size,
        )
        if s.uses_data_dir():
            s.data_dir.mkdir(parents=True, exist_ok=True)
        _log.info(
            "eventmill %s: bus %s, store %s, webhook sources: %s",
            __version__,
            redact_url(s.bus),
            redact_url(s.store),
            ", ".join(sorted(self.ctx.config.receivers)) or "none",
        )
        bus_ready = asyncio.Event()
        store_ready = asyncio.Event()

        def set_bus(bus: PubSub) -> None:
            self.ctx.bus = bus
            bus_ready.set()

        def set_store(store: Store) -> None:
            self.ctx.store = store
            store_ready.set()

        bus_tried, store_tried = asyncio.Event(), asyncio.Event()
        connectors = (
            _connect(
                "bus", s.bus, lambda: open_pubsub(s.bus), set_bus, self.errors, self.stop, bus_tried
            ),
            _connect(
                "store",
                s.store,
                lambda: open_store(s.store),
                set_store,
                self.errors,
                self.stop,
                store_tried,
            ),
        )
        self.tasks.extend(asyncio.create_task(c) for c in connectors)
        # Give both one attempt before serving, so a healthy start is ready at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(bus_tried.wait(), store_tried.wait()),
                timeout=_FIRST_ATTEMPT_SECONDS,
            )
        if bus_ready.is_set() and store_ready.is_set():
            await self._start_workers()
        else:
            self.tasks.append(asyncio.create_task(self._background(bus_ready, store_ready)))

    async def _background(self, bus_ready: asyncio.Event, store_ready: asyncio.Event) -> None:
        """Start the workers once the bus and the store are both open."""
        await bus_ready.wait()
        await store_ready.wait()
        await self._start_workers()

    async def _start_workers(self) -> None:
        """Run the relay and the audit handler (its subscription open before returning)."""
        ctx, s = self.ctx, self.settings
        assert ctx.bus is not None
        assert ctx.store is not None
        assert self.relay is not None
        self.tasks.append(asyncio.create_task(self.relay.run()))
        inserter = GroupCommitInserter(ctx.store)
        ctx.inserter = inserter
        self.tasks.append(asyncio.create_task(inserter.run()))
        marker = PublishMarker(ctx)
        ctx.marker = marker
        self.tasks.append(asyncio.create_task(marker.run()))
        if s.audit_enabled:
            # On sqlite:// the bus itself passes over the events the ingest path stored.
            subscriber = AuditSubscriber(ctx.bus)
            router = Router(subscriber=subscriber, publisher=ctx.bus, config=RouterConfig())
            router.add_handler("audit", EVENTS_TOPIC, audit_handler(ctx), group="audit")
            self.router = router
            self.tasks.append(asyncio.create_task(router.run()))
            try:
                await router.running()
            except RouterError as exc:
                _log.error("the audit handler could not start: %s", exc.__cause__ or exc)

    async def close(self) -> None:
        self.stop.set()
        if self.router is not None:
            with contextlib.suppress(Exception):
                await self.router.close()
        if self.relay is not None:
            self.relay.stop()
        if self.ctx.inserter is not None:
            await self.ctx.inserter.close()
        if self.ctx.marker is not None:
            with contextlib.suppress(Exception):
                await self.ctx.marker.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.ctx.bus is not None:
            with contextlib.suppress(Exception):
                await self.ctx.bus.close()
        if self.ctx.store is not None:
            with contextlib.suppress(Exception):
                await self.ctx.store.close()

    def readiness(self) -> Readiness:
        s = self.settings
        bus = ComponentState(
            ok=self.ctx.bus is not None, url=redact_url(s.bus), error=self.errors.get("bus")
        )
        store = ComponentState(
            ok=self.ctx.store is not None, url=redact_url(s.store), error=self.errors.get("store")
        )
        status: Literal["ready", "unavailable"] = "ready" if bus.ok and store.ok else "unavailable"
        return Readiness(status=status, bus=bus, store=store)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI application (routes, error handlers, lifespan) for ``settings``.

    ``settings`` defaults to :meth:`Settings.load` (environment and config file).
    """
    settings = settings if settings is not None else Settings.load()
    ctx = IngestContext(config=_ingest_config(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = _Runtime(settings, ctx)
        app.state.runtime = runtime
        await runtime.start()
        # What exists now (modules, app, open resources) lives as long as the process:
        # keep it out of the cyclic GC's full collections, which otherwise re-scan it
        # about once a second under load (several % of the CPU at a thousand req/s).
        gc.freeze()
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="eventmill",
        version=__version__,
        summary="Webhook and event gateway: signed webhooks and service events in, "
        "durably stored and published on the bus.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.ingest = ctx
    install_error_handlers(app)

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """Liveness: 200 while the process serves requests."""
        return Health()

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["operations"],
        responses={503: {"model": Readiness, "description": "Bus or store unavailable"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: 200 when the bus and the store are open, else 503 naming which is not."""
        state: Readiness = request.app.state.runtime.readiness()
        code = 200 if state.status == "ready" else 503
        return JSONResponse(state.model_dump(mode="json"), status_code=code)

    app.include_router(ingest_router)
    return app


@contextlib.asynccontextmanager
async def open_key_store(settings: Settings) -> AsyncIterator[ApiKeyStore]:
    """Open the store named by ``settings`` and yield its API key store (for the CLI)."""
    if settings.uses_data_dir():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await open_store(settings.store)
    try:
        yield store.api_keys
    finally:
        await store.close()
