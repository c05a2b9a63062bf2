"""The WebSocket close codes of ``/ws`` and what a client should do on each."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode"]


class CloseCode(IntEnum):
    """Why the server closed a WebSocket. The close reason carries a short machine
    code (``token_expired``, ``slow_consumer``, ...) for the cases that have several."""

    GOING_AWAY = 1001
    """The server is shutting down: reconnect (to another node) and resume."""
    MESSAGE_TOO_BIG = 1009
    """The client sent a message larger than ``max_client_message_bytes``."""
    INTERNAL_ERROR = 1011
    """An unexpected server error: reconnect with backoff and resume."""
    TRY_AGAIN_LATER = 1013
    """The node holds ``max_connections`` connections: reconnect later (with backoff)."""
    UNAUTHORIZED = 4001
    """No token, or a token that is not acceptable (malformed, bad signature, wrong
    audience or issuer, algorithm not allowed, ``alg: none``); the reason names the
    problem (``token_bad_signature``, ...). Do not reconnect with the same token."""
    TOKEN_EXPIRED = 4002
    """The token expired (on connect, or while connected): get a new token, then
    reconnect and resume."""
    FORBIDDEN_ORIGIN = 4003
    """The page's origin is not in ``allowed_origins``. Do not reconnect."""
    SLOW_CONSUMER = 4008
    """The client did not read fast enough and its bounded buffer overflowed:
    reconnect at once and resume from the last position seen."""
    RESUME_GAP_TOO_OLD = 4009
    """The resume position cannot be covered (the events after it are no longer
    retained, there are more than ``resume_max_events`` of them, or the position is
    unknown): reload the state, then reconnect without ``since``."""
    TOO_MANY_CONNECTIONS = 4029
    """The user holds ``max_connections_per_user`` connections on this node."""
    BAD_REQUEST = 4400
    """The connection's query parameters are invalid (a bad ``since`` or pattern)."""
