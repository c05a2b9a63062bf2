"""``GET /sse``: Server-Sent Events.

Each event is ``id: <store position>``, ``event: <event name>``, ``data: <Event JSON>``.
The stream opens with ``retry:`` and an ``id:`` line holding the position the live
stream starts at (an ``id:`` without ``data:`` moves the browser's ``Last-Event-ID``
without firing an event), and carries a ``: keep-alive`` comment (with the current
position as ``id:``) every ``heartbeat_seconds``. ``X-Accel-Buffering: no`` keeps
proxies from buffering it.

A browser's ``EventSource`` reconnects by itself with ``Last-Event-ID``: the stream
then replays every event after that position from the store before the live ones
(``since`` in the query does the same on a first connection). When that gap cannot
be covered, the stream says so with a ``resume_failed`` event and continues live.
The stream ends with a last event naming why: ``slow_consumer`` (the client's buffer
overflowed; it reconnects and resumes), ``token_expired``, ``shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from eventmill.realtime.access import (
    RefusedError,
    authenticate,
    credential_of,
    origin_allowed,
    origin_trusted,
)
from eventmill.realtime.codes import CloseCode
from eventmill.realtime.connection import RESUME, Connection, PatternError
from eventmill.realtime.context import RealtimeContext, abort_transport
from eventmill.realtime.feed import FeedEvent
from eventmill.realtime.hub import Hub, LimitError, ResumeError
from eventmill.realtime.websocket import parse_patterns, parse_position
from eventmill.store.errors import StoreError
from eventmill.web.errors import ApiError, error_responses

__all__ = ["routes"]

_DISCONNECTED = 0
_ENDINGS: dict[int, str] = {
    CloseCode.SLOW_CONSUMER: "slow_consumer",
    CloseCode.TOKEN_EXPIRED: "token_expired",
    CloseCode.UNAUTHORIZED: "key_revoked",  # the only 4001 of an open stream
    CloseCode.GOING_AWAY: "shutdown",
    CloseCode.TRY_AGAIN_LATER: "unavailable",
}
_MESSAGES = {
    "slow_consumer": "the client fell behind; reconnect with Last-Event-ID to resume",
    "token_expired": "the token expired; reconnect with a new token",
    "shutdown": "the server is shutting down; reconnect to resume",
    "unavailable": "the event store is unavailable; reconnect later",
    "key_revoked": "the API key was revoked; connect with another",
}


def _sse(event: str, data: dict[str, Any], position: int | None = None) -> bytes:
    head = f"id: {position}\n" if position is not None else ""
    return f"{head}event: {event}\ndata: {orjson.dumps(data).decode()}\n\n".encode()


class _Stream(Response):
    """The SSE response: writes the connection's frames until it closes."""

    media_type = "text/event-stream"

    def __init__(
        self,
        conn: Connection,
        hub: Hub,
        ctx: RealtimeContext,
        since: int | None,
        expires_at: float | None,
        headers: dict[str, str],
    ) -> None:
        super().__init__(headers=headers, media_type=self.media_type)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.conn = conn
        self.hub = hub
        self.ctx = ctx
        self.since = since
        self.expires_at = expires_at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn, hub, s = self.conn, self.hub, self.ctx.settings
        loop = asyncio.get_running_loop()
        expiry = None
        if self.expires_at is not None:
            delay = max(0.0, self.expires_at + self.ctx.leeway - time.time())
            expiry = loop.call_later(delay, conn.close, CloseCode.TOKEN_EXPIRED, "token_expired")
        conn.abort = lambda: abort_transport(receive)
        conn.grace = s.close_grace_seconds
        watcher = asyncio.create_task(_watch_disconnect(receive, conn))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            opening = f"retry: {s.sse_retry_ms}\n: connected\n"
            if self.since is None:
                hub.go_live(conn)
                opening += f"id: {conn.cursor}\n"
            else:
                conn.resume_from = self.since
            first = opening.encode() + b"\n"
            await send({"type": "http.response.body", "body": first, "more_body": True})
            await self._pump(send)
        except OSError:
            conn.close(_DISCONNECTED, "disconnected")
        finally:
            if expiry is not None:
                expiry.cancel()
            conn.release()
            hub.unregister(conn)
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        await self._end(send, receive)

    async def _pump(self, send: Send) -> None:
        conn, hub = self.conn, self.hub

        async def body(chunk: bytes) -> None:
            conn.sending = True
            try:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:
                conn.sending = False

        async def send_event(event: FeedEvent) -> None:
            await body(event.sse_frame())

        def on_live(position: int, replayed: int) -> None:
            conn.push(f"id: {position}\n\n".encode())

        while True:
            item = await conn.next()
            if item is None:
                return
            if item is RESUME:
                since = conn.resume_from
                assert since is not None
                try:
                    await hub.resume(conn, since, send_event, on_live=on_live)
                except ResumeError as exc:
                    hub.go_live(conn)
                    failed = {
                        "error": exc.problem,
                        "message": f"{exc}; reload the state, the stream continues live",
                        "oldest_position": exc.oldest,
                        "position": conn.cursor,
                    }
                    await body(_sse("resume_failed", failed, conn.cursor))
                except StoreError:
                    conn.close(CloseCode.TRY_AGAIN_LATER, "unavailable")
                continue
            assert isinstance(item, bytes)
            if conn.queue:  # write what is queued in one chunk
                parts = [item]
                while len(parts) < 256 and (frame := conn.pop()) is not None:
                    assert isinstance(frame, bytes)
                    parts.append(frame)
                item = b"".join(parts)
            await body(item)

    async def _end(self, send: Send, receive: Receive) -> None:
        """End the response: with a last event naming why, unless the client left."""
        closing = self.conn.closing
        if closing is None or closing[0] == _DISCONNECTED:
            return
        ending = _ENDINGS.get(closing[0], closing[1])
        chunk = _sse(ending, {"error": ending, "message": _MESSAGES.get(ending, ending)})
        try:
            async with asyncio.timeout(self.ctx.settings.close_grace_seconds):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            abort_transport(receive)  # the client does not read: drop it
        except OSError:
            pass


async def _watch_disconnect(receive: Receive, conn: Connection) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.close(_DISCONNECTED, "disconnected")
            return


def routes(ctx: RealtimeContext) -> APIRouter:
    """The ``/sse`` route, bound to the feature's context."""
    router = APIRouter(tags=["realtime"])

    @router.get(
        "/sse",
        response_class=Response,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The event stream"},
            **error_responses(400, 401, 403, 429, 503),
        },
    )
    async def sse(
        request: Request,
        events: Annotated[
            list[str] | None,
            Query(description="Event-name patterns, comma-separated (default: every event)"),
        ] = None,
        since: Annotated[str | None, Query(description="Resume after this store position")] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        """Live events for the token's user as Server-Sent Events (see the module docs).

        Authenticate with ``Authorization: Bearer <JWT>``, the ``token`` query parameter
        or the token cookie. ``Last-Event-ID`` (sent by ``EventSource`` when it
        reconnects) or ``since`` resumes after a position.
        """
        s = ctx.settings
        # masks it for the access log
        credential = credential_of(request, ctx.resources, s.allowed_origins)
        headers = {
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
        origin = request.headers.get("origin")
        if not origin_allowed(request, s.allowed_origins):
            raise ApiError(403, "forbidden_origin", "this page's origin may not read the stream")
        if origin is not None:
            headers["Access-Control-Allow-Origin"] = origin
            if origin_trusted(request, s.allowed_origins):  # not for a page let in by "*"
                headers["Access-Control-Allow-Credentials"] = "true"
            headers["Vary"] = "Origin"
        hub = ctx.hub
        if hub is None:
            raise ApiError(503, "unavailable", "the realtime hub is starting; retry later")
        try:
            principal = await authenticate(request, ctx.resources, credential)
        except RefusedError as refused:
            raise ApiError(
                refused.status,
                refused.reason,
                refused.message,
                headers={"WWW-Authenticate": "Bearer"} if refused.status == 401 else None,
            ) from None
        try:
            position = parse_position(last_event_id, "Last-Event-ID")
            if position is None:
                position = parse_position(since, "since")
            patterns = parse_patterns(events or [], s.max_patterns)
        except PatternError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        conn = Connection(
            "sse",
            user_id=principal.user_id,
            all_users=principal.all_users,
            patterns=patterns,
            max_messages=s.max_pending_messages,
            max_bytes=s.max_pending_bytes,
        )
        conn.key_id = principal.key.id if principal.key is not None else None
        try:
            hub.register(conn)
        except LimitError as exc:
            status = 429 if exc.code == CloseCode.TOO_MANY_CONNECTIONS else 503
            raise ApiError(status, "limit", str(exc)) from None
        return _Stream(conn, hub, ctx, position, principal.expires_at, headers)

    return router
