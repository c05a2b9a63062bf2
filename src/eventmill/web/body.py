"""Reading a request body under a size limit, and parsing it as JSON under a nesting limit.

Every route that takes a body uses these two, so every route answers the same way:
415 for a body sent with a ``Content-Encoding`` (gzip, ...: bodies are read as sent),
413 for a body over the size limit, 400 for a body that is not JSON, 422 for JSON
nested deeper than :data:`MAX_JSON_DEPTH` or holding an integer beyond 64 bits (the
parser would turn it into an inexact float, and the store's serializer cannot write
it: refused rather than changed); a client that goes away mid-body is
:class:`~starlette.requests.ClientDisconnect` (answered by the app's error handlers
with one debug log line, no traceback).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, TypeVar

import orjson
import pydantic
from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request

from eventmill.events.envelope import validation_error
from eventmill.web.errors import ApiError

__all__ = ["MAX_JSON_DEPTH", "json_depth_exceeds", "parse_json", "read_limited", "read_model"]

MAX_JSON_DEPTH: Final = 64
"""Most arrays and objects a JSON body may nest (``{"a": [1]}`` nests 2): deeper → 422
``json_too_deep``. Far above any provider's webhook or any event, and far below what
the store's serializer (orjson: 254 levels) and the parser (1,024) can take."""

_LONG_DIGITS: Final = re.compile(rb"[0-9]{20}|-[0-9]{19}")
"""A run of digits that may be an integer outside the 64-bit range (or is in a string)."""
_INT_RANGE: Final = range(-(2**63), 2**64)
"""The integers orjson parses and writes exactly."""
_OPEN_BRACKET: Final = ord("[")
_OPEN_BRACE: Final = ord("{")


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"request body is larger than the {limit} byte limit",
        headers={"Connection": "close"},
    )


def _encoded(request: Request) -> bool:
    """Whether the body is sent with a content coding other than ``identity``."""
    codings = request.headers.getlist("content-encoding")
    return any(c.strip().lower() not in ("", "identity") for h in codings for c in h.split(","))


def _unsupported_encoding() -> ApiError:
    return ApiError(
        415,
        "unsupported_content_encoding",
        "the request body has a Content-Encoding, which is not supported: send it "
        "uncompressed (no Content-Encoding, or identity)",
        headers={"Accept-Encoding": "identity", "Connection": "close"},
    )


def _too_deep(limit: int, what: str = "request body") -> ApiError:
    return ApiError(
        422,
        "json_too_deep",
        f"{what} nests arrays and objects more than {limit} levels deep (the limit)",
    )


async def read_limited(request: Request, limit: int) -> bytes:
    """Return the raw body, or raise 413 as soon as it is known to exceed ``limit`` bytes.

    A body with a ``Content-Encoding`` other than ``identity`` is refused before any of
    it is read: 415 ``unsupported_content_encoding``, with ``Accept-Encoding: identity``
    (it would otherwise be parsed compressed, and fail as JSON that is not UTF-8).
    A ``Content-Length`` over the limit is refused before any of the body is read; a
    body without one (chunked) is counted while streaming and refused at the first
    chunk that crosses the limit, so at most ``limit`` bytes plus one chunk are read.
    The response asks the client to close the connection, so the unread rest is dropped.
    A client that disconnects before the body is complete raises
    :class:`~starlette.requests.ClientDisconnect` (nobody is left to answer).
    """
    if "content-encoding" in request.headers and _encoded(request):
        raise _unsupported_encoding()
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


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests arrays and objects more than ``limit`` deep."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:  # breadth first: one list per level, no per-node bookkeeping
        depth += 1
        if depth > limit:
            return True
        below = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level = below
    return False


def _check_integers(body: bytes, what: str) -> None:
    """Refuse ``body`` if it holds an integer orjson would turn into a float (a slower,
    exact parse, run only when a long run of digits is there at all)."""
    if _LONG_DIGITS.search(body) is None:
        return

    def exact_integer(text: str) -> int:
        if len(text) > 21 or int(text) not in _INT_RANGE:  # (at most 20 digits and a sign)
            raise ApiError(
                422,
                "number_out_of_range",
                f"{what} holds an integer outside the 64-bit range (-2^63 to 2^64-1), which "
                "would not be kept exactly; send it as a string",
            )
        return int(text)

    try:
        json.loads(body, parse_int=exact_integer)
    except ValueError:  # not JSON, or not UTF-8: orjson says so next
        return


def parse_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH, what: str = "request body") -> Any:
    """Parse ``body`` as JSON: 400 ``malformed_json`` (with the position of the problem)
    if it is not, 422 ``json_too_deep`` if it nests more than ``max_depth`` levels, 422
    ``number_out_of_range`` for an integer beyond 64 bits. ``what`` names the JSON in
    the messages (the CLI parses its options with it too: ``--payload``)."""
    if not body:
        raise ApiError(400, "malformed_json", f"{what} is empty; a JSON document is required")
    _check_integers(body, what)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in exc.msg:  # orjson's own bound (1,024 levels)
            raise _too_deep(max_depth, what) from None
        raise ApiError(400, "malformed_json", f"{what} is not valid JSON: {exc}") from None
    # Nesting needs one opening bracket per level: a body with no more of them than the
    # limit (every webhook) is not walked at all; the count runs at C speed.
    if body.count(_OPEN_BRACKET) + body.count(_OPEN_BRACE) > max_depth and json_depth_exceeds(
        value, max_depth
    ):
        raise _too_deep(max_depth, what)
    return value


M = TypeVar("M", bound=BaseModel)


async def read_model(
    request: Request, model: type[M], *, limit: int = 64 * 1024, optional: bool = False
) -> M:
    """Read a JSON body (:func:`read_limited`, :func:`parse_json`) and validate it as
    ``model``: 422 ``validation_failed`` naming each failing field. ``optional``: an
    empty body is ``model()``."""
    raw = await read_limited(request, limit)
    if optional and not raw.strip():
        return model()
    data = parse_json(raw)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error(exc, "invalid body") from None
