"""API key authentication for the publish and query API.

A key is sent as ``Authorization: Bearer em_…`` (or ``X-API-Key: em_…``). No key, a
malformed, unknown or revoked key → 401; a valid key without the route's scope → 403.
Keys are verified against their stored hash (see :mod:`eventmill.store`); the key
itself never appears in a response or a log line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from eventmill.ingest.context import IngestContext
from eventmill.store import ApiKeyRecord
from eventmill.web.errors import ApiError

__all__ = ["PublishKey", "ReadKey", "require_scope"]

_bearer = HTTPBearer(auto_error=False, description="An eventmill API key: `Bearer em_…`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An eventmill API key")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def require_scope(scope: str) -> Callable[..., Awaitable[ApiKeyRecord]]:
    """A FastAPI dependency that returns the caller's key record if it holds ``scope``."""

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header: Annotated[str | None, Security(_header)],
    ) -> ApiKeyRecord:
        presented = bearer.credentials if bearer is not None else header
        if not presented:
            raise _unauthorized("an API key is required (Authorization: Bearer <key>)")
        ctx: IngestContext = request.app.state.ingest
        record = await ctx.require_keys().verify(presented)
        if record is None:
            raise _unauthorized("the API key is invalid or revoked")
        if not record.allows(scope):
            raise ApiError(403, "forbidden", f"the API key lacks the {scope!r} scope")
        return record

    return dependency


PublishKey = Annotated[ApiKeyRecord, Depends(require_scope("publish"))]
"""The caller's key, which holds scope ``publish``."""
ReadKey = Annotated[ApiKeyRecord, Depends(require_scope("read"))]
"""The caller's key, which holds scope ``read``."""
