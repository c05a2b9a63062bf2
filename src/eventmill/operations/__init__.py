"""Layer 5, operations: what an operator uses to see and fix what happened —
replaying stored events, tracing one event hop by hop, the rejected-webhook log.

The composition root lists :class:`Operations`; the CLI calls :func:`replay` and
:func:`trace` directly on the store and the bus.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

from fastapi import APIRouter

from eventmill.operations.replay import REPLAYED_MARK, ReplayResult, replay
from eventmill.operations.routes import routes
from eventmill.operations.trace import Trace, TraceHop, trace
from eventmill.web.seam import FeatureRoles, Resources

__all__ = [
    "REPLAYED_MARK",
    "Operations",
    "ReplayResult",
    "Trace",
    "TraceHop",
    "replay",
    "trace",
]


class Operations:
    """The operator's HTTP routes; no workers."""

    name = "operations"
    roles = FeatureRoles(routes="api", workers="api")

    def __init__(self, resources: Resources) -> None:
        self._router = routes(resources)

    @property
    def router(self) -> APIRouter:
        return self._router

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        yield

    def health(self) -> Mapping[str, str]:
        return {}
