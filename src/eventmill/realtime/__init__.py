"""Layer 5, realtime: live events for browsers over WebSocket (``/ws``) and
Server-Sent Events (``/sse``), with JWT auth, per-user subscriptions, gap-free resume
from the store and multi-node fan-out; the JS client (``/client.js``) and the live
dashboard (``/``).

The composition root lists :class:`Realtime` (routes, settings section, lifespan).
"""

from eventmill.realtime.codes import CloseCode
from eventmill.realtime.config import RealtimeSettings
from eventmill.realtime.feature import Realtime
from eventmill.realtime.feed import Feed, FeedEvent
from eventmill.realtime.hub import Hub

__all__ = ["CloseCode", "Feed", "FeedEvent", "Hub", "Realtime", "RealtimeSettings"]
