"""The composition root: ``create_app(settings)`` builds the eventmill ASGI application.

It owns the shared :class:`~eventmill.web.seam.Resources` (bus, store, event registry,
JWT verifier) and lists the features (:func:`features`). The lifespan opens the bus
(:func:`eventmill.open_pubsub`) and the store, then enters each feature's lifespan
(ingest: the outbox relay and the audit handler, ...). A bus or store that cannot be
reached on start does not stop the service: it is retried in the background,
``/readyz`` answers 503 naming it, routes that need it answer 503 until it is back
(providers retry), and the features start once both are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from pydantic import BaseModel
from starlette.routing import BaseRoute
from swagger_ui_bundle import swagger_ui_path

from eventmill import __version__
from eventmill.delivery import Delivery
from eventmill.errors import EventmillError
from eventmill.events import EventRegistry
from eventmill.ingest import Ingest
from eventmill.operations import Operations
from eventmill.pubsub.base import PubSub
from eventmill.pubsub.factory import open_pubsub, redact_url
from eventmill.realtime import Realtime
from eventmill.settings import Settings
from eventmill.store import ApiKeyStore, Store, open_store
from eventmill.web.errors import install_error_handlers
from eventmill.web.fastlane import FastLane, lane_routes
from eventmill.web.garbage import SurvivorFreezer
from eventmill.web.metrics import ReconnectCollector
from eventmill.web.seam import EVENTS_TOPIC, Feature, Resources
from eventmill.web.tokens import JwtVerifier

__all__ = [
    "DOCS_ASSETS",
    "EVENTS_TOPIC",
    "create_app",
    "display_url",
    "features",
    "open_key_store",
    "resources_of",
    "startup_message",
]

_log = logging.getLogger("eventmill.app")
_RECONNECT_MAX_SECONDS = 10.0
_FIRST_ATTEMPT_SECONDS = 30.0
DOCS_ASSETS = "/docs/assets"
"""Where Swagger UI's own files are served from (the installed ``swagger-ui-bundle-v2``
package): ``/docs`` needs no CDN, so it works offline and in a private network."""


def features(settings: Settings, resources: Resources) -> list[Feature]:
    """The service's features, in start order (stopped in reverse): one line each."""
    return [
        Ingest(settings, resources),
        Delivery(settings.delivery, resources, shutdown_grace=settings.shutdown_grace_seconds),
        Realtime(settings.realtime, resources),
        Operations(resources),
    ]


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
    """Readiness: the bus and the store are both usable, and no feature reports a problem."""

    status: Literal["ready", "unavailable"]
    bus: ComponentState
    store: ComponentState
    features: dict[str, dict[str, str]] = {}
    """Problems reported by features' workers, by feature name (empty when all is well)."""


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
    """What the lifespan opens and closes: the shared resources, then the features."""

    def __init__(self, settings: Settings, resources: Resources, feats: list[Feature]) -> None:
        self.settings = settings
        self.resources = resources
        self.features = feats
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()
        self._started: list[str] = []

    async def start(self) -> None:
        s, res = self.settings, self.resources
        if s.uses_data_dir():
            s.data_dir.mkdir(parents=True, exist_ok=True)
        _log.info(
            "eventmill %s: bus %s, store %s, features: %s",
            __version__,
            redact_url(s.bus),
            redact_url(s.store),
            ", ".join(f.name for f in self.features),
        )
        bus_ready = asyncio.Event()
        store_ready = asyncio.Event()

        def set_bus(bus: PubSub) -> None:
            res.bus = bus
            bus_ready.set()

        def set_store(store: Store) -> None:
            res.store = store
            self.tasks.append(asyncio.create_task(store.journal.run()))
            store_ready.set()

        bus_tried, store_tried = asyncio.Event(), asyncio.Event()
        connectors = (
            _connect(
                "bus", s.bus, lambda: open_pubsub(s.bus), set_bus, res.errors, self.stop, bus_tried
            ),
            _connect(
                "store",
                s.store,
                lambda: open_store(s.store),
                set_store,
                res.errors,
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
            await self._start_features()
        else:
            self.tasks.append(asyncio.create_task(self._background(bus_ready, store_ready)))

    async def _background(self, bus_ready: asyncio.Event, store_ready: asyncio.Event) -> None:
        """Start the features once the bus and the store are both open."""
        await bus_ready.wait()
        await store_ready.wait()
        await self._start_features()

    async def _start_features(self) -> None:
        """Enter each feature's lifespan, in list order."""
        for feature in self.features:
            await self._stack.enter_async_context(feature.lifespan())
            self._started.append(feature.name)

    async def close(self) -> None:
        """Leave the features' lifespans (reverse order), then close the bus and the store."""
        self.stop.set()
        try:
            await self._stack.aclose()
        except Exception:
            _log.exception("a feature failed to stop cleanly")
        if self.resources.store is not None:
            with contextlib.suppress(Exception):
                await self.resources.store.journal.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        res = self.resources
        if res.bus is not None:
            with contextlib.suppress(Exception):
                await res.bus.close()
        if res.store is not None:
            with contextlib.suppress(Exception):
                await res.store.close()

    def readiness(self) -> Readiness:
        s, res = self.settings, self.resources
        bus = ComponentState(
            ok=res.bus is not None, url=redact_url(s.bus), error=res.errors.get("bus")
        )
        store = ComponentState(
            ok=res.store is not None, url=redact_url(s.store), error=res.errors.get("store")
        )
        problems = {f.name: dict(h) for f in self.features if (h := f.health())}
        ready = bus.ok and store.ok and not problems
        return Readiness(
            status="ready" if ready else "unavailable", bus=bus, store=store, features=problems
        )


def resources_of(app: FastAPI) -> Resources:
    """The shared resources of an app built by :func:`create_app`."""
    resources = app.state.resources
    assert isinstance(resources, Resources)
    return resources


def create_app(
    settings: Settings | None = None,
    *,
    freeze_gc: bool = False,
    on_started: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the ASGI application (routes, error handlers, lifespan) for ``settings``.

    ``settings`` defaults to :meth:`Settings.load` (environment and config file).
    ``freeze_gc``: once started, keep the cyclic garbage collector's full collections
    to what is new since the last (:class:`~eventmill.web.garbage.SurvivorFreezer`),
    and report their pauses on ``/metrics``; only for a process the service owns
    (``eventmill serve`` sets it), since it changes collection for the whole process.
    ``on_started``: called once the lifespan has started (``eventmill serve`` prints
    :func:`startup_message`).
    """
    settings = settings if settings is not None else Settings.load()
    resources = Resources(
        registry=EventRegistry.default(allow_unknown=settings.accept_unknown_events),
        topic=EVENTS_TOPIC,
        jwt=JwtVerifier(settings.jwt) if settings.jwt.configured else None,
    )
    ProcessCollector(registry=resources.metrics)
    PlatformCollector(registry=resources.metrics)
    freezer = SurvivorFreezer(resources.metrics) if freeze_gc else None
    resources.metrics.register(ReconnectCollector(resources))
    roles = set(settings.roles)
    feats = features(settings, resources)
    workers = [f for f in feats if f.roles.workers in roles]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = _Runtime(settings, resources, workers)
        app.state.runtime = runtime
        await runtime.start()
        if on_started is not None:
            on_started()
        if freezer is not None:
            # What exists now (modules, app, open resources), and what survives each full
            # collection from now on, is left out of the next full collection: they
            # re-scanned it about once a second under load (several % of the CPU at a
            # thousand req/s) and paused the node ~0.8 s at 10,000 WebSocket connections.
            freezer.install()
        try:
            yield
        finally:
            await runtime.close()
            if freezer is not None:
                freezer.uninstall()

    app = FastAPI(
        title="eventmill",
        version=__version__,
        summary="Webhook and event gateway: signed webhooks and service events in, "
        "durably stored and published on the bus.",
        lifespan=lifespan,
        docs_url=None,  # served below, from installed assets
        redoc_url=None,  # ReDoc has no installable assets: it would load from a CDN
    )
    app.state.settings = settings
    app.state.resources = resources
    laned: dict[tuple[str, str], BaseRoute] = {}  # filled once every route is in
    app.add_middleware(FastLane, routes=laned)  # inside the request-id middleware:
    install_error_handlers(app)  # added after it, so outer

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
        """Readiness: 200 when the bus and the store are open and every feature runs,
        else 503 naming what is not."""
        state: Readiness = request.app.state.runtime.readiness()
        code = 200 if state.status == "ready" else 503
        return JSONResponse(state.model_dump(mode="json"), status_code=code)

    # HEAD too, as some load balancers and uptime checkers probe (not in the schema: the
    # same operation as GET)
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics of this process (text exposition format)."""
        return Response(generate_latest(resources.metrics), media_type=CONTENT_TYPE_LATEST)

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Swagger UI for the OpenAPI schema, from assets served by this app."""
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from swagger.io
        )

    routes = list(app.routes)  # in the order the router tries them
    for feature in feats:
        if feature.roles.routes in roles:
            app.include_router(feature.router)
            routes.extend(feature.router.routes)
    laned.update(lane_routes(routes))
    return app


def display_url(url: str) -> str:
    """``url`` as shown to a person: password redacted, a relative SQLite path made
    absolute (so it says which file, from whatever directory it was started)."""
    shown = redact_url(url)
    scheme, sep, rest = shown.partition(":///")
    if sep and scheme.startswith("sqlite"):
        path, q, query = rest.partition("?")
        if path and not path.startswith("/") and not path.startswith(":memory:"):
            return f"{scheme}:///{Path(path).absolute()}{q}{query}"
    return shown


def _browsable(host: str) -> str:
    """An address a browser on this machine can open for a bound ``host``."""
    if host in ("0.0.0.0", "", "::", "[::]"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def startup_message(
    settings: Settings,
    command: str = "eventmill",
    *,
    dev_secrets: Path | None = None,
    dev_secret_names: Sequence[str] = ("Razorpay", "JWT"),
) -> str:
    """What ``eventmill serve`` prints on start: where the docs are, the store and the
    bus, which webhook sources are on (and how to turn Razorpay on), and how to create
    an API key with ``command`` (the ``eventmill`` executable as the user can run it).
    ``dev_secrets``: the file of the development secrets in use, if any, and
    ``dev_secret_names`` which of them are (those not configured)."""
    base = f"http://{_browsable(settings.host)}:{settings.port}"
    sources = sorted(settings.sources)
    razorpay_on = bool(settings.razorpay_webhook_secret)
    if razorpay_on:
        sources.insert(0, "razorpay")
    on = ", ".join(f"POST /webhooks/{name}" for name in sources) if sources else "none"
    lines = [
        f"eventmill {__version__} on {base}",
        f"  API docs   {base}/docs",
        f"  store      {display_url(settings.store)}",
        f"  bus        {display_url(settings.bus)}",
        f"  webhooks   {on}",
    ]
    if dev_secrets is not None:
        lines.append(
            f"             development secrets ({', '.join(dev_secret_names)}) in {dev_secrets}; "
            f"try {command} demo"
        )
    if not razorpay_on:
        lines.append(
            "             Razorpay is off: set RAZORPAY_WEBHOOK_SECRET=<your webhook secret> "
            "and restart to turn on POST /webhooks/razorpay"
        )
    lines.append(
        f"  API key    {command} keys create <name> --scope publish --scope read  "
        "(for POST and GET /v1/events; the key is printed once)"
    )
    return "\n".join(lines)


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
