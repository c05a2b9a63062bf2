"""Configuration of the realtime feature: its settings section (``EVENTMILL_REALTIME__*``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

__all__ = ["RealtimeSettings"]


def _split(value: Any) -> Any:
    """Accept ``"a,b"`` or a JSON list (``'["a", "b"]'``) as well as a list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import orjson

            return orjson.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class RealtimeSettings(BaseModel):
    """WebSocket (``/ws``), Server-Sent Events (``/sse``), the JS client and the dashboard
    (settings section ``realtime``, env ``EVENTMILL_REALTIME__*``).

    Every buffer is bounded: a connection holds at most ``max_pending_messages``
    messages (and ``max_pending_bytes`` bytes) not yet written to its socket; beyond
    that it is closed as a slow consumer (WebSocket code 4008; an SSE stream ends) and
    the client resumes from the last position it saw.
    """

    model_config = {"extra": "forbid", "frozen": True}

    enabled: bool = True
    """Whether the realtime routes and hub run (default yes)."""
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins (``https://app.example.com``) whose pages may open ``/ws`` and read
    ``/sse`` (``EVENTMILL_REALTIME__ALLOWED_ORIGINS``, comma-separated). The service's
    own origin is always allowed, and so are clients that send no ``Origin`` (not a
    browser); ``*`` allows every origin. Default: none besides the service's own."""
    heartbeat_seconds: float = Field(default=15.0, gt=0, le=3600)
    """Interval of the server's heartbeat: a ``{"type": "heartbeat"}`` message on
    WebSocket, a ``: keep-alive`` comment on SSE (default 15 s)."""
    sse_retry_ms: int = Field(default=2000, ge=0, le=600_000)
    """The ``retry:`` an SSE stream announces: how long a browser waits before
    reconnecting (default 2000 ms)."""
    max_pending_messages: int = Field(default=1000, ge=1, le=1_000_000)
    """Most messages queued for one connection and not yet written (default 1000)."""
    max_pending_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Most bytes queued for one connection and not yet written (default 1 MiB)."""
    close_grace_seconds: float = Field(default=5.0, gt=0, le=300)
    """How long a closing handshake may wait for a client that does not read; after it
    the connection is dropped (default 5 s)."""
    max_connections: int = Field(default=50_000, ge=1)
    """Most connections (WebSocket and SSE) one node holds; more are refused
    (WebSocket close 1013, SSE 503) (default 50,000)."""
    max_connections_per_user: int = Field(default=100, ge=1)
    """Most connections one user (one token subject) holds on one node; more are
    refused (WebSocket close 4029, SSE 429) (default 100)."""
    max_patterns: int = Field(default=100, ge=1, le=10_000)
    """Most event-name patterns one connection subscribes to (default 100)."""
    max_client_message_bytes: int = Field(default=16 * 1024, ge=256)
    """Largest message a WebSocket client may send (default 16 KiB); larger closes the
    connection with 1009."""
    resume_max_events: int = Field(default=10_000, ge=1)
    """Most missed events a resume replays. A client that missed more gets the
    explicit "resume gap too old" answer (WebSocket close 4009, an SSE
    ``resume_failed`` event) and reloads its state instead (default 10,000)."""
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    """How often the hub reads the store even when the bus wakes it not (default 1 s):
    events stored by another path (the audit handler, the outbox relay) arrive at the
    latest this late."""
    read_batch: int = Field(default=500, ge=1, le=10_000)
    """Events read from the store per query (hub and replay; default 500)."""

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        value = _split(value)
        if isinstance(value, list):
            return [str(v).rstrip("/") for v in value]
        return value
