"""``GET /ws``: the WebSocket endpoint.

Server messages (JSON text):

* ``{"type": "connected", "user_id": …, "events": [...], "position": P, ...}`` first;
  ``position`` is where the live stream starts (absent when resuming);
* ``{"type": "event", "position": P, "payload": <Event JSON>}`` for each event;
* ``{"type": "resumed", "since": S, "replayed": N, "position": P}`` when a replay is
  done and the live stream follows;
* ``{"type": "heartbeat", "position": P}`` every ``heartbeat_seconds``: every event
  for the client up to ``P`` has been sent before it;
* replies: ``pong``, ``subscribed``, ``unsubscribed``, ``refreshed``, ``error``.

Client messages: ``{"type": "subscribe", "events": ["razorpay.payment.*"], "since": P}``
(both optional; the first subscribe replaces the default "every event", later ones
add), ``{"type": "unsubscribe", "events": [...]}``, ``{"type": "ping"}`` (→ ``pong``),
``{"type": "refresh", "token": "<new JWT>"}`` (same ``sub``; moves the expiry). An
``id`` in a client message is echoed in the reply.

Query parameters: ``token``, ``events`` (comma-separated patterns), ``since`` (resume
from a position, the race-free way to resume), ``recent`` (without ``since``: first the
client's events among the last N stored, then live). Close codes: :class:`CloseCode`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from eventmill.realtime import eager, frames
from eventmill.realtime.access import RefusedError, authenticate, credential_of, origin_allowed
from eventmill.realtime.codes import CloseCode
from eventmill.realtime.connection import Connection, PatternError, check_patterns
from eventmill.realtime.context import RealtimeContext, abort_transport
from eventmill.realtime.feed import FeedEvent
from eventmill.realtime.hub import Hub, LimitError, ResumeError
from eventmill.store.errors import StoreError
from eventmill.web.errors import ApiError
from eventmill.web.tokens import TokenError

__all__ = ["parse_patterns", "parse_position", "routes"]

_log = logging.getLogger("eventmill.realtime")

_DISCONNECTED = 0
"""``Connection.closing`` code for a connection the client closed (no close to send)."""


def _json(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


_MAX_POSITION: Final = 2**63 - 1


def parse_position(value: str | None, what: str, kind: str = "a store position") -> int | None:
    """A position (or, ``kind`` saying so, a count) from a query parameter or header
    (``None`` when absent)."""
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()):  # str.isdigit alone takes "²", "٣"
        raise PatternError(f"{what} must be {kind} (a non-negative integer)")
    # Past any store's head (a 64-bit position), however long: the resume then answers
    # "position unknown", as for any position beyond the newest event.
    digits = value.lstrip("0") or "0"
    return min(int(digits[:20]), _MAX_POSITION)


def parse_patterns(values: list[str], limit: int) -> list[str] | None:
    """Event patterns from query values (each comma-separated), or ``None`` (all)."""
    patterns = [p.strip() for v in values for p in v.split(",") if p.strip()]
    return check_patterns(patterns, limit) if patterns else None


class _Expiry:
    """Closes the connection with 4002 when its token expires (moved by ``refresh``)."""

    def __init__(self, conn: Connection, leeway: float) -> None:
        self.conn = conn
        self.leeway = leeway
        self.handle: asyncio.TimerHandle | None = None

    def set(self, expires_at: float | None) -> None:
        self.cancel()
        if expires_at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires_at + self.leeway - time.time())
        self.handle = loop.call_later(
            delay, self.conn.close, CloseCode.TOKEN_EXPIRED, "token_expired"
        )

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


async def _refuse(websocket: WebSocket, code: int, reason: str, message: str) -> None:
    """Tell the client why (an ``error`` message), then close with ``code``."""
    with contextlib.suppress(Exception):
        await websocket.send_text(_json({"type": "error", "error": reason, "message": message}))
        await websocket.close(code, reason)


class _Endpoint:
    """The ``/ws`` endpoint as a plain ASGI app: a Starlette route without FastAPI's
    per-request layers (dependency solving, exit stacks), which a connection would
    keep alive, and pay for in memory, for as long as it is open."""

    def __init__(self, ctx: RealtimeContext) -> None:
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _serve(WebSocket(scope, receive, send), send, self.ctx)


async def _upgrade_required(request: Request) -> Response:
    """``GET /ws`` without a WebSocket handshake (curl, a browser's address bar)."""
    raise ApiError(
        426,
        "upgrade_required",
        "GET /ws is a WebSocket endpoint: connect with a WebSocket client "
        "(Upgrade: websocket), or use GET /sse for Server-Sent Events",
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
    )


def routes(ctx: RealtimeContext) -> list[BaseRoute]:
    """The ``/ws`` route, bound to the feature's context, and its answer to plain HTTP."""
    return [
        WebSocketRoute("/ws", _Endpoint(ctx), name="realtime_websocket"),
        Route("/ws", _upgrade_required, methods=["GET"], include_in_schema=False),
    ]


async def _serve(websocket: WebSocket, send: Send, ctx: RealtimeContext) -> None:
    """Live events for the token's user over WebSocket (see the module docs); frames go
    through the raw ASGI ``send`` (Starlette's ``WebSocket`` does the handshake, the
    reads and the close)."""
    s = ctx.settings
    # masks it for the access log
    credential = credential_of(websocket, ctx.resources, s.allowed_origins)
    query = websocket.query_params
    # Accept first: a browser sees the close code only on an open WebSocket.
    await websocket.accept()
    if not origin_allowed(websocket, s.allowed_origins):
        await _refuse(
            websocket,
            CloseCode.FORBIDDEN_ORIGIN,
            "forbidden_origin",
            "this page's origin may not open the WebSocket",
        )
        return
    hub = ctx.hub
    if hub is None:
        await _refuse(websocket, CloseCode.TRY_AGAIN_LATER, "starting", "retry later")
        return
    try:
        principal = await authenticate(websocket, ctx.resources, credential)
    except RefusedError as refused:
        await _refuse(websocket, refused.code, refused.reason, refused.message)
        return
    try:
        since = parse_position(query.get("since"), "since")
        recent = parse_position(query.get("recent"), "recent", "a number of events")
        patterns = parse_patterns(query.getlist("events"), s.max_patterns)
    except PatternError as exc:
        await _refuse(websocket, CloseCode.BAD_REQUEST, "bad_request", str(exc))
        return
    conn = Connection(
        "ws",
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
        await _refuse(websocket, exc.code, "limit", str(exc))
        return
    receive = websocket._receive
    conn.abort = lambda: abort_transport(receive)
    conn.grace = s.close_grace_seconds
    expiry = _Expiry(conn, ctx.leeway)
    expiry.set(principal.expires_at)
    sender = _Sender(websocket, send, conn, hub, s.close_grace_seconds)
    conn.spawn = sender.start
    conn.direct = sender.write_now
    if sender.raw is not None:
        conn.wire = sender.write_wire
    try:
        hello: dict[str, Any] = {
            "type": "connected",
            "user_id": principal.user_id,
            "all_users": principal.all_users,
            "events": conn.patterns,
            "heartbeat_seconds": s.heartbeat_seconds,
        }
        if since is None and recent:
            # The events among the last ``recent`` stored (those the client may see),
            # then live: a dashboard opened after the fact shows what just happened.
            oldest = await hub.feed.oldest()
            floor = 0 if oldest is None else oldest - 1
            since = max(floor, hub.head - min(recent, s.resume_max_events))
        if since is None:
            hub.go_live(conn)
            hello["position"] = conn.cursor
        else:
            conn.resume_from = since
        conn.push(_json(hello))
        user = (principal.user_id, principal.all_users)
        del principal, hello  # not kept for the connection's lifetime
        await _read(websocket, conn, ctx, user, expiry)
        await sender.finished()
    finally:
        expiry.cancel()
        conn.release()
        conn.spawn = conn.direct = conn.wire = None
        hub.unregister(conn)
        sender.cancel()


class _Sender:
    """Writes the connection's frames (and its replays) to the socket. A frame pushed
    while nothing is queued is written at once, in the pusher's stack
    (:meth:`write_now`); a task runs only while frames wait (the client's socket is
    full, a replay is under way): an idle connection holds no task for it."""

    __slots__ = ("conn", "grace", "hub", "raw", "send", "task", "websocket")

    def __init__(
        self, websocket: WebSocket, send: Send, conn: Connection, hub: Hub, grace: float
    ) -> None:
        self.websocket = websocket
        self.send = send
        self.conn = conn
        self.hub = hub
        self.grace = grace
        self.task: asyncio.Task[None] | None = None
        self.raw = frames.raw_protocol(send)
        """The server's protocol when frames may be written to its transport directly
        (:mod:`eventmill.realtime.frames`)."""

    def start(self) -> None:
        """Called by the connection when it has queued something to write."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def _busy(self) -> bool:
        """Whether a frame must wait its turn: a run is under way (the socket is full,
        frames are queued), a replay is due, or the connection is closing."""
        conn = self.conn
        return self.task is not None or conn.resume_from is not None or conn.closing is not None

    def write_now(self, frame: str | bytes) -> bool:
        """Write ``frame`` at once if no run is under way and no replay is due (so
        frames keep their order); return whether the frame was taken. The write
        finishes here unless the client's socket is full: then a run waits for it and
        writes what is queued meanwhile."""
        if self._busy():
            return False
        conn = self.conn
        assert isinstance(frame, str)
        raw = self.raw
        try:
            if raw is not None and frames.write_frame(raw, frames.text_frame(frame.encode())):
                return True
            pending = eager.start(self.send({"type": "websocket.send", "text": frame}))
        except (OSError, RuntimeError):  # the client is gone
            conn.close(_DISCONNECTED, "disconnected")
            return True
        except Exception:  # never the pusher's (the hub's) problem: drop this client
            _log.exception("writing to a WebSocket failed; dropping the connection")
            conn.close(_DISCONNECTED, "disconnected")
            if conn.abort is not None:
                conn.abort()
            return True
        if pending is not None:
            conn.sending = True
            self.task = asyncio.get_running_loop().create_task(self._run(pending))
        return True

    def write_wire(self, frame: bytes) -> bool:
        """Write ``frame``, a whole WebSocket frame, to the socket at once if nothing
        else is under way and the server's protocol would write it now (else the
        caller queues the frame's text); return whether it was written."""
        if self._busy():
            return False
        try:
            return frames.write_frame(self.raw, frame)
        except Exception:  # the client is gone, or worse: the text's way will tell
            return False

    async def finished(self) -> None:
        """Wait until the current run (if any) is done."""
        while self.task is not None:
            task = self.task
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
            if self.task is task:
                break

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _send(self, text: str) -> None:
        conn = self.conn
        conn.sending = True
        try:
            await self.send({"type": "websocket.send", "text": text})
        finally:
            conn.sending = False

    async def _send_event(self, event: FeedEvent) -> None:
        await self._send(event.ws_frame())

    async def _run(self, pending: asyncio.Future[None] | None = None) -> None:
        try:
            await self._write(pending)
        finally:
            self.task = None

    async def _write(self, pending: asyncio.Future[None] | None) -> None:
        conn = self.conn
        try:
            if pending is not None:  # a frame written at once that waits for the socket
                try:
                    await pending
                finally:
                    conn.sending = False
            while conn.closing is None:
                frame = conn.pop()
                if frame is not None:
                    assert isinstance(frame, str)
                    await self._send(frame)
                elif conn.resume_from is not None:
                    await self._resume(conn.resume_from)
                else:
                    return  # idle: the next push writes at once
        except (WebSocketDisconnect, OSError, RuntimeError):
            conn.close(_DISCONNECTED, "disconnected")
            return
        code, reason = conn.closing
        if code == _DISCONNECTED:
            return
        try:
            async with asyncio.timeout(self.grace):
                await self.websocket.close(code, reason)
        except TimeoutError:
            # The client does not read: its socket is full and the close frame cannot
            # be written. Drop the connection rather than hold it.
            if conn.abort is not None:
                conn.abort()
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass

    async def _resume(self, since: int) -> None:
        conn = self.conn

        def on_live(position: int, replayed: int) -> None:
            message = {"type": "resumed", "since": since, "replayed": replayed}
            conn.push(_json({**message, "position": position}))

        try:
            await self.hub.resume(conn, since, self._send_event, on_live=on_live)
        except ResumeError as exc:
            error = {
                "type": "error",
                "error": exc.problem,
                "message": str(exc),
                "oldest_position": exc.oldest,
                "position": exc.head,
            }
            await self._send(_json(error))
            conn.close(CloseCode.RESUME_GAP_TOO_OLD, exc.problem)
        except StoreError:
            conn.close(CloseCode.TRY_AGAIN_LATER, "store_unavailable")


async def _read(
    websocket: WebSocket,
    conn: Connection,
    ctx: RealtimeContext,
    user: tuple[str | None, bool],
    expiry: _Expiry,
) -> None:
    """Handle the client's messages until it disconnects (or is closed)."""
    limit = ctx.settings.max_client_message_bytes
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                conn.close(_DISCONNECTED, "disconnected")
                return
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                text = data.decode(errors="replace")
            # bytes, not characters (a character is up to 4 bytes in UTF-8)
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                conn.close(CloseCode.MESSAGE_TOO_BIG, "message_too_big")
                return
            reply = await _handle(text, conn, ctx, user, expiry)
            if reply is not None:
                conn.push(_json(reply))
    except (WebSocketDisconnect, OSError, RuntimeError):
        conn.close(_DISCONNECTED, "disconnected")


def _error(error: str, message: str, request_id: Any) -> dict[str, Any]:
    reply: dict[str, Any] = {"type": "error", "error": error, "message": message}
    if request_id is not None:
        reply["id"] = request_id
    return reply


async def _handle(
    text: str,
    conn: Connection,
    ctx: RealtimeContext,
    user: tuple[str | None, bool],
    expiry: _Expiry,
) -> dict[str, Any] | None:
    """One client message → its reply (``None``: no reply)."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _error("invalid_message", "messages must be JSON objects", None)
    if not isinstance(message, dict):
        return _error("invalid_message", "messages must be JSON objects", None)
    kind, request_id = message.get("type"), message.get("id")
    if request_id is not None and (
        not isinstance(request_id, str | int) or isinstance(request_id, bool)
    ):
        return _error("invalid_message", "'id' must be a string or an integer", None)

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        return body if request_id is None else {**body, "id": request_id}

    s = ctx.settings
    if kind == "ping":
        return reply({"type": "pong"})
    if kind in ("subscribe", "unsubscribe"):
        raw = message.get("events", message.get("event_types"))
        if (raw is not None or kind == "unsubscribe") and not isinstance(raw, list):
            return _error("invalid_message", "'events' must be a list of patterns", request_id)
        since = message.get("since")
        if kind == "subscribe" and raw is None and since is None:
            return _error(
                "invalid_message", "'subscribe' needs 'events' (patterns) or 'since'", request_id
            )
        if (
            kind == "subscribe"
            and since is not None
            and (not isinstance(since, int) or isinstance(since, bool) or since < 0)
        ):
            return _error("invalid_message", "'since' must be a store position", request_id)
        try:
            given = check_patterns(raw or [], s.max_patterns)
            if kind == "unsubscribe":
                conn.set_patterns([p for p in conn.patterns if p not in given])
                conn.explicit = True
                return reply({"type": "unsubscribed", "events": conn.patterns})
            if raw is not None:
                merged = given if not conn.explicit else conn.patterns + given
                conn.set_patterns(check_patterns(merged, s.max_patterns))
                conn.explicit = True
        except PatternError as exc:
            return _error("invalid_pattern", str(exc), request_id)
        if since is not None:
            conn.request_resume(since)
        return reply({"type": "subscribed", "events": conn.patterns})
    if kind == "refresh":
        token = message.get("token")
        verifier = ctx.resources.jwt
        if not isinstance(token, str) or verifier is None:
            return _error("invalid_message", "'refresh' needs a 'token'", request_id)
        try:
            fresh = await verifier.verify(token)
        except TokenError as exc:
            return _error(f"token_{exc.problem}", str(exc), request_id)
        if fresh.user_id != user[0]:
            return _error("token_mismatch", "the new token names another user", request_id)
        if fresh.all_users != user[1]:
            return _error(
                "token_mismatch",
                "the new token's all_users claim differs from the connection's",
                request_id,
            )
        expiry.set(fresh.expires_at)
        return reply({"type": "refreshed", "expires_at": fresh.expires_at})
    return _error(
        "unknown_type", "type must be subscribe, unsubscribe, ping or refresh", request_id
    )
