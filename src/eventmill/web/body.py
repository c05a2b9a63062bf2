"""Reading a request body under a size limit, and parsing it as a JSON object."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from eventmill.web.errors import ApiError

__all__ = ["parse_json", "read_limited"]


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"request body is larger than the {limit} byte limit",
        headers={"Connection": "close"},
    )


async def read_limited(request: Request, limit: int) -> bytes:
    """Return the raw body, or raise 413 as soon as it is known to exceed ``limit`` bytes.

    A ``Content-Length`` over the limit is refused before any of the body is read; a
    body without one (chunked) is counted while streaming and refused at the first
    chunk that crosses the limit, so at most ``limit`` bytes plus one chunk are read.
    The response asks the client to close the connection, so the unread rest is dropped.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not an integer") from None
        if size > limit:
            raise _too_large(limit)
    # The ASGI messages themselves rather than ``request.stream()``: no async generator
    # (and its registration with the event loop) per request.
    receive = request.receive
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                request._stream_consumed = True  # as stream() leaves it: read once
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            request._is_disconnected = True
            raise ClientDisconnect()


def parse_json(body: bytes) -> Any:
    """Parse ``body`` as JSON, or raise 400 with the position of the problem."""
    if not body:
        raise ApiError(400, "malformed_json", "request body is empty; a JSON document is required")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
