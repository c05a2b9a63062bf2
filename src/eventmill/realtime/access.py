"""Who may open ``/ws`` and ``/sse``: the page's origin, then the caller's credential.

The credential is an end user's JWT (``sub`` = the user id) from the
``Authorization: Bearer`` header, the ``token`` query parameter (browsers cannot set
headers on WebSocket or EventSource) or the token cookie; a JWT with the claim
``"eventmill": {"all_users": true}`` sees every user's events. An API key with scope
``read`` (``em_…``) is accepted too, for services and operators, and sees every
user's events. Verification is :class:`eventmill.web.tokens.JwtVerifier`'s: algorithms
pinned by configuration, ``alg: none`` and algorithm confusion refused, ``exp``,
``nbf``, ``aud`` and ``iss`` checked.

The cookie is the browser's to send with any page's request, so it counts only for
pages the service trusts by name: its own origin, or one listed in
``allowed_origins``. A page let in by ``*`` alone must present the token itself
(query parameter or header), which a foreign page does not have: otherwise any site
a user visits could read that user's stream with their cookie.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import HTTPConnection

from eventmill.realtime.codes import CloseCode
from eventmill.store.errors import StoreError
from eventmill.web.auth import token_from
from eventmill.web.seam import Resources
from eventmill.web.tokens import Principal, TokenError

__all__ = [
    "API_KEY_PREFIX",
    "RefusedError",
    "authenticate",
    "credential_of",
    "origin_allowed",
    "origin_trusted",
]

API_KEY_PREFIX = "em_"


class RefusedError(Exception):
    """Why a realtime client is refused: the WebSocket close ``code``, the HTTP
    ``status`` (SSE), a machine ``reason`` and a message without secrets."""

    def __init__(self, code: CloseCode, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.reason = reason
        self.message = message


def origin_allowed(conn: HTTPConnection, allowed: list[str]) -> bool:
    """Whether the page opening ``conn`` may: no ``Origin`` (not a browser), the
    service's own origin (same host), an origin in ``allowed``, or ``*`` in it."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    host = conn.headers.get("host")
    return host is not None and origin != "null" and urlsplit(origin).netloc == host


def origin_trusted(conn: HTTPConnection, allowed: list[str]) -> bool:
    """Whether the page opening ``conn`` may use the user's cookie (and, for SSE, read
    with credentials): no ``Origin``, the service's own, or one listed by name."""
    origin = conn.headers.get("origin")
    if origin is None or origin.rstrip("/") in allowed:
        return True
    host = conn.headers.get("host")
    return host is not None and origin != "null" and urlsplit(origin).netloc == host


def credential_of(conn: HTTPConnection, resources: Resources, allowed: list[str]) -> str | None:
    """The token or API key ``conn`` carries (header, ``token`` query parameter, or the
    cookie when :func:`origin_trusted`).

    The ``token`` query parameter is then masked in the connection's scope, which the
    server's access log prints: a credential never reaches a log line.
    """
    verifier = resources.jwt
    token = token_from(
        conn,
        verifier.settings if verifier is not None else None,
        query=True,
        cookie=origin_trusted(conn, allowed),
    )
    query = conn.scope.get("query_string", b"")
    if b"token=" in query:
        masked = [
            (name, "***" if name == "token" else value)
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        ]
        conn.scope["query_string"] = urlencode(masked, safe="*,").encode("latin-1")
    return token


async def authenticate(conn: HTTPConnection, resources: Resources, token: str | None) -> Principal:
    """The caller ``token`` (from :func:`credential_of`) names, or :class:`RefusedError`."""
    verifier = resources.jwt
    if not token:
        raise RefusedError(
            CloseCode.UNAUTHORIZED,
            401,
            "token_missing",
            "a token is required (Authorization: Bearer, the token query parameter or cookie)",
        )
    if token.startswith(API_KEY_PREFIX):
        try:
            record = await resources.require_keys().verify(token)
        except StoreError:
            raise RefusedError(
                CloseCode.TRY_AGAIN_LATER, 503, "store_unavailable", "retry later"
            ) from None
        if record is None:
            raise RefusedError(
                CloseCode.UNAUTHORIZED, 401, "invalid_api_key", "the API key is invalid or revoked"
            )
        if not record.allows("read"):
            raise RefusedError(
                CloseCode.UNAUTHORIZED, 403, "forbidden", "the API key lacks the 'read' scope"
            )
        return Principal(key=record, all_users=True)
    if verifier is None:
        raise RefusedError(
            CloseCode.UNAUTHORIZED,
            401,
            "token_not_configured",
            "end-user tokens are not configured on this server",
        )
    try:
        return await verifier.verify(token)
    except TokenError as exc:
        if exc.problem == "expired":
            raise RefusedError(CloseCode.TOKEN_EXPIRED, 401, "token_expired", str(exc)) from None
        if exc.problem == "keys_unavailable":
            raise RefusedError(
                CloseCode.TRY_AGAIN_LATER, 503, "token_keys_unavailable", str(exc)
            ) from None
        raise RefusedError(CloseCode.UNAUTHORIZED, 401, f"token_{exc.problem}", str(exc)) from None
