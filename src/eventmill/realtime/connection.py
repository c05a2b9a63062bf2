"""One client connection (WebSocket or SSE) as the hub sees it: who it is for, what it
subscribed to, where it is in the store's order, and its bounded send buffer."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, Literal

from eventmill.errors import ConfigurationError
from eventmill.events import compile_pattern
from eventmill.realtime.codes import CloseCode

if TYPE_CHECKING:
    from eventmill.realtime.feed import FeedEvent

__all__ = ["RESUME", "Connection", "PatternError", "Transport", "check_patterns"]

Transport = Literal["ws", "sse"]

RESUME: Final = object()
"""What :meth:`Connection.next` returns when the connection asked to resume: the
sender replays from the store before it takes anything else from the buffer."""


def _is_event(frame: str | bytes) -> bool:
    if isinstance(frame, str):
        return frame.startswith('{"type":"event"')
    return frame.startswith(b"id:")


class PatternError(ValueError):
    """An event-name pattern a client sent is not valid."""


def check_patterns(patterns: Iterable[object], limit: int) -> list[str]:
    """The patterns, validated (letters, digits, ``_ . : -``, ``*``), duplicates removed,
    at most ``limit``; raise :class:`PatternError` otherwise."""
    out: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise PatternError("event patterns must be strings")
        try:
            compile_pattern(pattern)
        except ConfigurationError as exc:
            raise PatternError(str(exc)) from None
        if pattern not in out:
            out.append(pattern)
    if len(out) > limit:
        raise PatternError(f"at most {limit} event patterns per connection")
    return out


class Connection:
    """A client's connection. The hub pushes frames without ever waiting: a frame
    pushed while nothing is queued goes to the ``direct`` writer when there is one
    (WebSocket: written to the socket in the pusher's stack); otherwise it waits in the
    buffer, in order, for the sender (the route serving it). When the buffer would
    exceed ``max_messages`` frames or ``max_bytes`` characters, the connection is closed
    as a slow consumer and its buffer dropped: one slow client never holds memory
    beyond that, nor delays anyone else."""

    __slots__ = (
        "_match",
        "_waiter",
        "_watchdog",
        "abort",
        "all_users",
        "closing",
        "cursor",
        "direct",
        "explicit",
        "grace",
        "key_id",
        "live",
        "max_bytes",
        "max_messages",
        "patterns",
        "pending_bytes",
        "queue",
        "resume_from",
        "sending",
        "sent",
        "spawn",
        "transport",
        "user_id",
        "wire",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        user_id: str | None,
        all_users: bool,
        patterns: list[str] | None,
        max_messages: int,
        max_bytes: int,
    ) -> None:
        self.transport: Transport = transport
        self.user_id = user_id
        """The user whose events this connection gets (the token's ``sub``)."""
        self.all_users = all_users
        """Whether it gets every user's events and events without a user (an operator's
        token with the ``all_users`` claim)."""
        self.key_id: str | None = None
        """The API key it authenticated with, if any: the hub closes the connection
        once the key is revoked."""
        self.patterns: list[str] = []
        self._match: re.Pattern[str] | None = None
        self.explicit = patterns is not None
        """Whether the client chose its patterns (else: every event, until it subscribes)."""
        self.set_patterns(["*"] if patterns is None else patterns)
        self.cursor = 0
        """While live: events at or before it are not sent (a resume position ahead of
        the hub's)."""
        self.live = False
        """Whether the hub pushes events to it (set once a resume has caught up)."""
        self.resume_from: int | None = None
        """A position to replay from, before anything else is sent."""
        self.queue: deque[str | bytes] | None = None
        """Frames not yet written; created on first use and dropped when empty (an
        idle connection holds none: an empty deque costs more than half a KB)."""
        self.pending_bytes = 0
        self.sent = False
        """Whether a frame (an event, a reply) was pushed since the hub's last heartbeat
        round looked: such a WebSocket is not idle and gets no heartbeat then (SSE gets
        its keep-alive every round; the flag is not read there)."""
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.closing: tuple[int, str] | None = None
        """``(code, reason)`` once the connection is being closed."""
        self._waiter: asyncio.Future[None] | None = None
        self.sending = False
        """Whether the sender is writing to the socket right now (it waits while the
        client's socket is full)."""
        self.abort: Callable[[], None] | None = None
        """Drops the connection at once (set by the route serving it)."""
        self.grace = 5.0
        """Seconds a close may wait for a sender stuck on a client that does not read."""
        self._watchdog: asyncio.TimerHandle | None = None
        self.spawn: Callable[[], None] | None = None
        """Starts the sender when there is something to write (WebSocket: the sender
        runs only then); ``None`` when the sender waits in :meth:`next` instead."""
        self.direct: Callable[[str | bytes], bool] | None = None
        """Writes a frame to the socket at once when nothing is queued, returning
        whether it took the frame (WebSocket: no task is woken for it); ``None``: every
        frame goes through the buffer."""
        self.wire: Callable[[bytes], bool] | None = None
        """Like ``direct``, for an event's WebSocket frame as bytes on the wire
        (:meth:`FeedEvent.ws_wire`, built once for every connection the event goes
        to); ``None`` when the connection cannot write those (SSE, or a server whose
        socket it cannot reach)."""

    # -- subscriptions ---------------------------------------------------------------

    def set_patterns(self, patterns: list[str]) -> None:
        """Subscribe to exactly ``patterns`` (validated by :func:`check_patterns`)."""
        self.patterns = list(patterns)
        if "*" in self.patterns:
            self._match = None
        elif self.patterns:
            joined = "|".join(f"(?:{compile_pattern(p).pattern})" for p in self.patterns)
            self._match = re.compile(joined)
        else:
            self._match = re.compile(r"(?!)")  # nothing

    def wants(self, event_name: str) -> bool:
        """Whether the connection subscribed to ``event_name``."""
        match = self._match
        return match is None or match.fullmatch(event_name) is not None

    # -- the buffer ------------------------------------------------------------------

    def push(self, frame: str | bytes) -> bool:
        """Queue a frame; on overflow close the connection (slow consumer)."""
        if self.closing is not None:
            return False
        self.sent = True
        size = len(frame)
        queue = self.queue
        if queue is None:
            direct = self.direct
            if direct is not None and direct(frame):
                return True
            queue = self.queue = deque()
        elif len(queue) >= self.max_messages or self.pending_bytes + size > self.max_bytes:
            self.close(CloseCode.SLOW_CONSUMER, "slow_consumer")
            return False
        queue.append(frame)
        self.pending_bytes += size
        self._wake()
        return True

    def push_event(self, event: FeedEvent) -> bool:
        """Queue ``event`` in this connection's transport's form (see :meth:`push`)."""
        if self.transport == "sse":
            return self.push(event.sse_frame())
        wire = self.wire
        if (
            wire is not None
            and self.queue is None
            and self.closing is None
            and wire(event.ws_wire())
        ):
            self.sent = True
            return True
        return self.push(event.ws_frame())

    def push_if_room(self, frame: str | bytes) -> bool:
        """Queue a frame that may be skipped (a heartbeat): never closes the connection."""
        if self.closing is not None:
            return False
        queue = self.queue
        if queue is None:
            direct = self.direct
            if direct is not None and direct(frame):
                return True
            queue = self.queue = deque()
        elif len(queue) >= self.max_messages:
            return False
        queue.append(frame)
        self.pending_bytes += len(frame)
        self._wake()
        return True

    def pop(self) -> str | bytes | None:
        """The next queued frame, or ``None``."""
        queue = self.queue
        if not queue:
            return None
        frame = queue.popleft()
        if not queue:
            self.queue = None
        self.pending_bytes -= len(frame)
        return frame

    def request_resume(self, position: int) -> None:
        """Replay from ``position`` before anything else: live pushes stop and queued
        events are dropped (the replay sends every event after ``position`` again);
        queued replies (``pong``, ...) are kept."""
        self.live = False
        self.resume_from = position
        kept = [f for f in self.queue or () if not _is_event(f)]
        self.queue = deque(kept) if kept else None
        self.pending_bytes = sum(len(f) for f in kept)
        self._wake()

    def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code``: what is queued is dropped, the sender
        writes the close and stops. The first close wins."""
        if self.closing is not None:
            return
        self.closing = (code, reason)
        self.live = False
        self.queue = None
        self.pending_bytes = 0
        self._wake()
        if self.sending and self.abort is not None:
            # The sender is stuck writing to a client that does not read: if it still
            # is after the grace period, drop the connection (it cannot even be told).
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(self.grace, self._abort_if_stuck)

    def _abort_if_stuck(self) -> None:
        self._watchdog = None
        if self.sending and self.abort is not None:
            self.abort()

    def release(self) -> None:
        """Forget timers (the connection is gone)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        elif self.spawn is not None:
            self.spawn()

    async def next(self) -> str | bytes | object | None:
        """The next frame to send, :data:`RESUME` when a replay is due, or ``None``
        once the connection is closing."""
        while True:
            if self.closing is not None:
                return None
            frame = self.pop()
            if frame is not None:
                return frame
            if self.resume_from is not None:
                return RESUME
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
