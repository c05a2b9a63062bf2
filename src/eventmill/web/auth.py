"""Who may call the service: API keys for services and operators, JWTs for end users.

**API keys** are sent as ``Authorization: Bearer em_…`` (or ``X-API-Key: em_…``). No
key, a malformed, unknown or revoked key → 401; a valid key without the route's scope
→ 403. Keys are verified against their stored hash (see :mod:`eventmill.store`).

**JWTs** identify the platform's own end users (their ``sub`` is the user id). They
come in ``Authorization: Bearer <jwt>``, or, where a browser cannot set headers
(WebSocket, EventSource) and the route allows it, in the ``token`` query parameter or
the cookie named by :attr:`JwtSettings.cookie_name`. The accepted algorithms are
pinned by configuration: an HS256 secret, an RS256/ES256 public key, or a JWKS URL
(keys cached, fetched again on an unknown ``kid`` at most every
``jwks_min_refresh_seconds``). ``alg: none`` and algorithm confusion (an HMAC token
signed with the public key) are refused; ``exp`` and ``nbf`` are checked when present,
``aud`` and ``iss`` when configured. No key, token or secret ever appears in a
response or a log line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Final

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from eventmill.store import ApiKeyRecord
from eventmill.web.errors import ApiError
from eventmill.web.seam import get_resources
from eventmill.web.tokens import JwtSettings, Principal, TokenError

__all__ = [
    "AdminKey",
    "PublishKey",
    "ReadKey",
    "require_principal",
    "require_scope",
    "token_from",
]

_bearer = HTTPBearer(
    auto_error=False, description="An eventmill API key (`Bearer em_…`) or an end user's JWT"
)
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An eventmill API key")

API_KEY_PREFIX: Final = "em_"


def _unauthorized(message: str, code: str = "unauthorized") -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def token_from(
    conn: HTTPConnection,
    settings: JwtSettings | None,
    *,
    query: bool = False,
    cookie: bool = False,
) -> str | None:
    """The bearer credential of a request or WebSocket: the ``Authorization: Bearer``
    header, else (where allowed) the ``token`` query parameter, else the token cookie."""
    header = conn.headers.get("authorization")
    if header is not None:
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return credential.strip()
    if query and (in_query := conn.query_params.get("token")):
        return in_query
    if cookie and settings is not None and (in_cookie := conn.cookies.get(settings.cookie_name)):
        return in_cookie
    return None


async def _api_key(request: Request, presented: str, scope: str) -> ApiKeyRecord:
    record = await get_resources(request).require_keys().verify(presented)
    if record is None:
        raise _unauthorized("the API key is invalid or revoked")
    if not record.allows(scope):
        raise ApiError(403, "forbidden", f"the API key lacks the {scope!r} scope")
    return record


def require_scope(scope: str) -> Callable[..., Awaitable[ApiKeyRecord]]:
    """A FastAPI dependency: the caller's API key, which must hold ``scope``."""

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header: Annotated[str | None, Security(_header)],
    ) -> ApiKeyRecord:
        presented = bearer.credentials if bearer is not None else header
        if not presented:
            raise _unauthorized("an API key is required (Authorization: Bearer <key>)")
        return await _api_key(request, presented, scope)

    return dependency


def require_principal(
    scope: str, *, query: bool = False, cookie: bool = False
) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: an API key holding ``scope``, or an end user's valid JWT.

    ``query`` / ``cookie``: also accept the JWT in the ``token`` query parameter or the
    token cookie (for browsers' WebSocket and EventSource, which cannot set headers).
    A route then limits an end user to what :meth:`Principal.may_act_for` allows.
    """

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header: Annotated[str | None, Security(_header)],
    ) -> Principal:
        resources = get_resources(request)
        jwt_settings = resources.jwt.settings if resources.jwt is not None else None
        if header:
            return Principal(key=await _api_key(request, header, scope))
        presented = token_from(request, jwt_settings, query=query, cookie=cookie)
        if not presented:
            raise _unauthorized("an API key or a user token is required (Authorization: Bearer)")
        if presented.startswith(API_KEY_PREFIX):
            return Principal(key=await _api_key(request, presented, scope))
        if resources.jwt is None:
            raise _unauthorized("end-user tokens are not configured on this server")
        try:
            return await resources.jwt.verify(presented)
        except TokenError as exc:
            raise _unauthorized(str(exc), f"token_{exc.problem}") from None

    return dependency


PublishKey = Annotated[ApiKeyRecord, Depends(require_scope("publish"))]
"""The caller's key, which holds scope ``publish``."""
ReadKey = Annotated[ApiKeyRecord, Depends(require_scope("read"))]
"""The caller's key, which holds scope ``read``."""
AdminKey = Annotated[ApiKeyRecord, Depends(require_scope("admin"))]
"""The caller's key, which holds scope ``admin``."""
