"""What the realtime routes share: settings, the service's resources, the running hub."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from eventmill.realtime.config import RealtimeSettings
from eventmill.realtime.hub import Hub
from eventmill.web.seam import Resources

__all__ = ["RealtimeContext", "abort_transport"]

_log = logging.getLogger("eventmill.realtime")


@dataclass(slots=True)
class RealtimeContext:
    """The realtime feature's state, as its routes see it."""

    settings: RealtimeSettings
    resources: Resources
    hub: Hub | None = None
    """The running hub; ``None`` until the bus and the store are open."""

    @property
    def leeway(self) -> float:
        """Seconds a token is still accepted after its ``exp`` (the JWT settings')."""
        jwt = self.resources.jwt
        return jwt.settings.leeway_seconds if jwt is not None else 0.0


def abort_transport(receive: Any) -> None:
    """Drop the TCP connection under an ASGI connection at once, even with unsent data.

    ASGI has no way to abort a connection whose peer stopped reading (a close waits
    for the socket to drain, forever if the client never reads). uvicorn's ``receive``
    is a method of its protocol object, which holds the asyncio transport; where that
    is so, abort it. Elsewhere this does nothing (the server's own timeouts apply).
    """
    protocol = getattr(receive, "__self__", None)
    transport = getattr(protocol, "transport", None)
    abort = getattr(transport, "abort", None)
    if callable(abort):
        with contextlib.suppress(Exception):
            abort()
    else:  # pragma: no cover - another ASGI server
        _log.debug("cannot abort a stalled connection on this ASGI server")
