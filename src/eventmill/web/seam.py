"""The seam between the composition root and the service's features (layer 4).

The root (:mod:`eventmill.app`) owns one :class:`Resources`: the bus, the store, the
event registry, the JWT verifier and the metrics registry, shared by every feature. A
feature package (``ingest/``, ``delivery/``, ``realtime/``) hands the root one object
satisfying
:class:`Feature`: its name, its routes, and its lifespan (the workers it runs while
the bus and the store are open). Features never import each other: they meet on the
bus (topic ``events``) and in the store. Adding a feature is a package plus one line
in the root's feature list (and its settings section, if it has one).

The model is Starlette's lifespan composition and Watermill's router plugins: the root
opens the shared resources (retrying in the background while a server is down), then
enters each feature's lifespan in list order and leaves them in reverse order.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Annotated, Literal, Protocol

from fastapi import APIRouter, Depends
from prometheus_client import CollectorRegistry
from starlette.requests import HTTPConnection

from eventmill.errors import BackendUnavailableError
from eventmill.events import EventRegistry
from eventmill.pubsub.base import PubSub
from eventmill.store import ApiKeyStore, EventStore, Store
from eventmill.store.errors import StoreUnavailableError
from eventmill.web.tokens import JwtVerifier

__all__ = [
    "EVENTS_TOPIC",
    "POSITION_KEY",
    "ROLES",
    "STORED_MARK",
    "STREAM_CONTROL_NAMES",
    "Feature",
    "FeatureRoles",
    "Resources",
    "ResourcesDep",
    "Role",
    "get_resources",
]

EVENTS_TOPIC = "events"
"""The topic every event crosses: ingest publishes to it, features subscribe to it."""

STREAM_CONTROL_NAMES: frozenset[str] = frozenset(
    {
        "resume_failed",
        "slow_consumer",
        "token_expired",
        "key_revoked",
        "shutdown",
        "unavailable",
        # EventSource's own event types: an event so named fires onerror/onopen/onmessage
        "error",
        "open",
        "message",
    }
)
"""The SSE stream's own messages (``event: resume_failed``, ...) and the browser's
EventSource event types (``error``, ``open``, ``message``): no event may be named so
through the publish API, or a browser's listener for one would fire for it."""

POSITION_KEY = "eventmill_position"
"""Metadata key on messages of events already stored: the event's store position (the
one order every client and replay sees)."""

STORED_MARK = "eventmill_stored"
"""Metadata key (value ``"1"``) on messages of events already in the store (published
by ingest, the relay or a replay): the audit handler does not store them again."""


@dataclass(slots=True)
class Resources:
    """What the composition root opens once and every feature shares.

    ``bus`` and ``store`` are ``None`` until the root has connected them (it keeps
    retrying while their servers are down); the ``require_*`` accessors raise the
    error that the web layer answers as 503, so a route never sees ``None``.
    """

    registry: EventRegistry
    """Event name → payload model; every feature validates events against it."""
    topic: str = EVENTS_TOPIC
    """The topic events are published to and read from (default ``events``)."""
    jwt: JwtVerifier | None = None
    """Verifies end users' JWTs; ``None`` when no JWT key is configured."""
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    """The app's Prometheus registry: features register their metrics here (one
    registry per app, so several apps in one process never share counters)."""
    bus: PubSub | None = None
    """The open bus, once connected."""
    store: Store | None = None
    """The open store, once connected."""
    errors: dict[str, str] = field(default_factory=dict)
    """Why a resource is not open (``"bus"`` / ``"store"`` → last connection error)."""

    def require_bus(self) -> PubSub:
        """The open bus, or :class:`~eventmill.BackendUnavailableError` (→ 503)."""
        if self.bus is None:
            raise BackendUnavailableError("the bus is not reachable; retry later")
        return self.bus

    def require_store(self) -> Store:
        """The open store, or :class:`~eventmill.store.errors.StoreUnavailableError` (→ 503)."""
        if self.store is None:
            raise StoreUnavailableError("the event store is not reachable; retry later")
        return self.store

    def require_events(self) -> EventStore:
        """The open event store (→ 503 while it is not open)."""
        return self.require_store().events

    def require_keys(self) -> ApiKeyStore:
        """The open API key store (→ 503 while it is not open)."""
        return self.require_store().api_keys


Role = Literal["api", "ingest", "delivery", "realtime"]
ROLES: tuple[Role, ...] = ("api", "ingest", "delivery", "realtime")
"""The roles a process can run (``eventmill serve --role api,ingest``; default all):
a deployment scales each separately on a shared bus and PostgreSQL store."""


@dataclass(frozen=True, slots=True)
class FeatureRoles:
    """Under which roles a feature's routes and its workers run."""

    routes: Role
    """The role whose processes serve the feature's HTTP routes."""
    workers: Role
    """The role whose processes run the feature's lifespan (its workers)."""


class Feature(Protocol):
    """One feature of the service, as the composition root sees it.

    * ``name`` - a short identifier (``ingest``, ``delivery``, ``realtime``): logs,
      readiness, trace hops.
    * ``roles`` - the role (one of :data:`ROLES`) serving its routes, and the one
      running its workers: ``delivery``'s routes are ``api``, its dispatcher ``delivery``.
    * ``router`` - every HTTP route of the feature; the root includes it.
    * ``lifespan()`` - entered once the bus and the store are open: start the
      feature's workers (subscriptions, dispatchers, relays) and return once they run;
      on exit, stop them gracefully (in-flight work lands) before the root closes the
      bus and the store.
    * ``health()`` - the state of the feature's own workers (``{}`` when it has none
      or all is well), reported by ``/readyz``.
    """

    @property
    def name(self) -> str: ...

    @property
    def roles(self) -> FeatureRoles: ...

    @property
    def router(self) -> APIRouter: ...

    def lifespan(self) -> AbstractAsyncContextManager[None]: ...

    def health(self) -> Mapping[str, str]: ...


def get_resources(request: HTTPConnection) -> Resources:
    """The typed dependency through which routes reach the shared :class:`Resources`."""
    resources = request.app.state.resources
    if not isinstance(resources, Resources):  # pragma: no cover - set by create_app
        raise TypeError("the app was not built by eventmill.app.create_app")
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]
"""A route parameter of this type receives the app's :class:`Resources`."""
