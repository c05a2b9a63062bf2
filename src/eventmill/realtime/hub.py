"""The hub: follows the store, hands each event to the connections it is for.

Every node runs one hub. It subscribes to the events topic *without a group* (the
bus's ephemeral fan-out, so every node sees every event and leaves nothing behind
when it goes) and treats each message as a wake-up: it then reads the store past
``head``, the last position it handed out, and pushes each event to the live
connections of its user that subscribed to its name (and to every ``all_users``
connection). Reading the store rather than trusting the message alone gives every
client the store's one order, and makes resume exact: a client's replay (events
after its position, read from the store) and the live stream (events after
``head``) are one read position apart, and the seam between them is a comparison of
positions (:meth:`Hub.resume`).

Events published straight to the bus carry no position yet: the audit handler stores
them, and the hub polls the store briefly until it sees them. Besides, it reads the
store every ``poll_interval_seconds`` anyway (events the relay republishes while the
bus was away, a wake-up lost while the bus reconnected).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from eventmill.errors import EventmillError
from eventmill.pubsub.base import PubSub
from eventmill.realtime.codes import CloseCode
from eventmill.realtime.config import RealtimeSettings
from eventmill.realtime.connection import Connection
from eventmill.realtime.feed import Feed, FeedEvent
from eventmill.store.journal import Journal
from eventmill.web.seam import POSITION_KEY

__all__ = ["Hub", "LimitError", "ResumeError"]

_log = logging.getLogger("eventmill.realtime")

"""Metadata key of the store position on messages ingest publishes (the same key ingest
sets; features meet on the bus, they do not import each other)."""

_UNSTORED_POLL: Final = 0.05
"""Seconds between store reads while an event seen on the bus without a position is
not in the store yet (the audit handler is storing it)."""
_UNSTORED_WAIT: Final = 10.0
"""How long the hub polls for such an event before leaving it to the regular poll."""
_UNSTORED_MAX: Final = 10_000
"""Most such events remembered at once (beyond, the oldest are forgotten)."""
_RETRY_MAX: Final = 5.0
_BEAT_SLICE: Final = 500
"""Connections given their heartbeat between two yields to the event loop."""
_STOP_WAIT: Final = 5.0
"""Seconds the hub waits for its tasks and its subscription to stop."""

_closing: set[asyncio.Task[None]] = set()


def _close_soon(subscription: object) -> None:
    """Close a bus subscription in the background, bounded: a subscription whose close
    waits (for a bus that is closing too) never holds the hub's shutdown."""

    async def close() -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_STOP_WAIT):
                await subscription.close()  # type: ignore[attr-defined]

    task = asyncio.get_running_loop().create_task(close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class LimitError(Exception):
    """A connection limit is reached (``code``: the close code to answer with)."""

    def __init__(self, code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ResumeError(Exception):
    """A resume position cannot be covered; ``problem`` is ``resume_gap_too_old`` or
    ``resume_position_unknown``."""

    def __init__(self, problem: str, message: str, oldest: int | None, head: int) -> None:
        super().__init__(message)
        self.problem = problem
        self.oldest = oldest
        self.head = head


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "eventmill_realtime_connections",
            "Open realtime connections on this node",
            ["transport"],
            registry=registry,
        )
        self.sent = Counter(
            "eventmill_realtime_messages_sent",
            "Events queued to realtime connections (live and replayed), by transport",
            ["transport"],
            registry=registry,
        )
        self.replayed = Counter(
            "eventmill_realtime_events_replayed",
            "Events sent to resuming clients from the store",
            registry=registry,
        )
        self.closed = Counter(
            "eventmill_realtime_closed",
            "Connections the server closed, by reason",
            ["reason"],
            registry=registry,
        )
        self.head = Gauge(
            "eventmill_realtime_hub_position",
            "The last store position the hub handed out",
            registry=registry,
        )


class Hub:
    """Connections by user, and the loop that follows the store for them."""

    def __init__(
        self,
        feed: Feed,
        settings: RealtimeSettings,
        metrics: CollectorRegistry,
        journal: Journal | None = None,
    ) -> None:
        self.feed = feed
        self.journal = journal
        """Where each event's push to connections is recorded (``eventmill trace``)."""
        self.settings = settings
        self.head = 0
        """The last store position handed out to live connections."""
        self._by_user: dict[str, set[Connection]] = {}
        self._everyone: set[Connection] = set()
        self._count = {"ws": 0, "sse": 0}
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._unstored: dict[str, float] = {}
        self._problems: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.metrics = _Metrics(metrics)

    # -- lifecycle -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self, bus: PubSub, topic: str) -> AsyncIterator[None]:
        """Subscribe to ``topic`` (no group), start at the store's newest position and
        follow it; on exit stop following (connections are closed by the caller)."""
        subscription = None
        try:
            subscription = await bus.subscribe(topic)
        except (EventmillError, OSError) as exc:
            self._problems["bus"] = f"the hub could not subscribe to {topic!r}: {exc}"
            _log.warning("%s; following the store by polling", self._problems["bus"])
        self.head = await self.feed.head()
        self.metrics.head.set(self.head)
        self._started = True
        self._tasks = [
            asyncio.create_task(self._follow(), name="realtime-follow"),
            asyncio.create_task(self._listen(bus, topic, subscription), name="realtime-listen"),
            asyncio.create_task(self._heartbeats(), name="realtime-heartbeat"),
        ]
        try:
            yield
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(self._tasks, timeout=_STOP_WAIT)
            self._tasks = []
            if _closing:
                await asyncio.wait(set(_closing), timeout=_STOP_WAIT)
            self.feed.close()

    def health(self) -> Mapping[str, str]:
        """Problems of the hub (the bus subscription, store reads), if any."""
        return dict(self._problems)

    # -- connections -----------------------------------------------------------------

    @property
    def connections(self) -> int:
        """How many connections this node holds."""
        return self._count["ws"] + self._count["sse"]

    def register(self, conn: Connection) -> None:
        """Count ``conn`` in (not live yet); raise :class:`LimitError` when a limit is
        reached."""
        s = self.settings
        if self.connections >= s.max_connections:
            raise LimitError(CloseCode.TRY_AGAIN_LATER, "this node holds its most connections")
        if conn.all_users:
            group = self._everyone
        else:
            assert conn.user_id is not None
            group = self._by_user.setdefault(conn.user_id, set())
        if len(group) >= s.max_connections_per_user and not conn.all_users:
            raise LimitError(
                CloseCode.TOO_MANY_CONNECTIONS,
                f"the user holds {s.max_connections_per_user} connections already",
            )
        group.add(conn)
        self._empty.clear()
        self._count[conn.transport] += 1
        self.metrics.connections.labels(conn.transport).inc()

    def unregister(self, conn: Connection) -> None:
        """Forget ``conn`` (idempotent)."""
        conn.live = False
        if conn.all_users:
            group = self._everyone
        else:
            assert conn.user_id is not None
            group = self._by_user.get(conn.user_id, set())
        if conn not in group:
            return
        group.discard(conn)
        if not group and not conn.all_users and conn.user_id is not None:
            self._by_user.pop(conn.user_id, None)
        self._count[conn.transport] -= 1
        if not self.connections:
            self._empty.set()
        self.metrics.connections.labels(conn.transport).dec()
        if conn.closing is not None:
            self.metrics.closed.labels(conn.closing[1] or str(conn.closing[0])).inc()

    async def emptied(self) -> None:
        """Return once this node holds no connection."""
        await self._empty.wait()

    def all_connections(self) -> list[Connection]:
        """Every connection of this node."""
        out = list(self._everyone)
        for group in self._by_user.values():
            out.extend(group)
        return out

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection with ``code`` (shutdown: 1001)."""
        for conn in self.all_connections():
            conn.close(code, reason)

    # -- resume ----------------------------------------------------------------------

    async def resume(
        self,
        conn: Connection,
        since: int,
        send: Callable[[FeedEvent], Awaitable[None]],
        *,
        on_live: Callable[[int, int], None] | None = None,
    ) -> int:
        """Send ``conn`` every event for it after ``since`` from the store, in order,
        then make it live, with no gap and no duplicate at the seam; return how many
        were replayed. ``send`` writes one event to the client (and waits while the
        client's socket is full: a replay has backpressure, not a buffer).
        ``on_live(position, replayed)`` is called at the moment the connection goes
        live, before any live event is queued for it.

        Raises :class:`ResumeError` before sending anything when the events after
        ``since`` cannot all be sent: some are no longer stored (retention deleted
        events up to a position after ``since``), there are more than
        ``resume_max_events``, or ``since`` is past the newest stored position.
        """
        conn.live = False
        conn.resume_from = None
        s, feed = self.settings, self.feed
        user = None if conn.all_users else conn.user_id
        patterns = None if "*" in conn.patterns else conn.patterns
        newest = max(await feed.head(), self.head)
        oldest = await feed.oldest()
        if since > newest:
            raise ResumeError(
                "resume_position_unknown",
                f"position {since} is past the newest stored event ({newest})",
                oldest,
                newest,
            )
        if oldest is not None and since < oldest - 1:
            raise ResumeError(
                "resume_gap_too_old",
                f"events after position {since} are no longer stored (oldest: {oldest})",
                oldest,
                newest,
            )
        missed = await feed.count_for_client(
            since, user_id=user, patterns=patterns, cap=s.resume_max_events
        )
        if missed > s.resume_max_events:
            raise ResumeError(
                "resume_gap_too_old",
                f"more than {s.resume_max_events} events were missed since position {since}",
                oldest,
                newest,
            )
        cursor, replayed = since, 0
        while conn.closing is None:
            target = self.head
            if cursor >= target:
                # No await between this comparison and going live: every event after
                # ``cursor`` is either replayed above or pushed by the hub from now on.
                conn.cursor = cursor
                conn.live = True
                if on_live is not None:
                    on_live(cursor, replayed)
                break
            batch = await feed.for_client(
                cursor, target, user_id=user, patterns=patterns, limit=s.read_batch
            )
            for event in batch:
                await send(event)
                replayed += 1
            cursor = batch[-1].position if len(batch) == s.read_batch else target
        if replayed:
            self.metrics.replayed.inc(replayed)
            self.metrics.sent.labels(conn.transport).inc(replayed)
        return replayed

    def go_live(self, conn: Connection) -> None:
        """Make ``conn`` live from the hub's current position (a connection without
        a resume position)."""
        conn.cursor = self.head
        conn.live = True

    # -- following the store ---------------------------------------------------------

    def wake(self) -> None:
        """Read the store now."""
        self._wake.set()

    async def _listen(self, bus: PubSub, topic: str, subscription: object) -> None:
        """Wake the follower for every message on the topic (re-subscribing while the
        bus is away)."""
        delay = 0.2
        while True:
            if subscription is None:
                try:
                    subscription = await bus.subscribe(topic)
                except (EventmillError, OSError) as exc:
                    self._problems["bus"] = f"the hub could not subscribe to {topic!r}: {exc}"
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                self._problems.pop("bus", None)
                self.wake()  # catch up on whatever the outage hid
            try:
                async for message in subscription:  # type: ignore[attr-defined]
                    message.ack()
                    delay = 0.2
                    position = message.metadata.get(POSITION_KEY)
                    if position is None:
                        self._expect(message.id)
                    elif not (position.isascii() and position.isdigit()) or (
                        int(position) > self.head
                    ):
                        self._wake.set()
            except asyncio.CancelledError:
                _close_soon(subscription)
                raise
            except (EventmillError, OSError) as exc:
                self._problems["bus"] = f"the hub's subscription to {topic!r} failed: {exc}"
                _log.warning("%s; re-subscribing", self._problems["bus"])
            except Exception as exc:
                self._problems["bus"] = f"the hub's subscription to {topic!r} failed: {exc!r}"
                _log.exception("the hub's subscription failed; re-subscribing")
            _close_soon(subscription)
            subscription = None
            await asyncio.sleep(delay)

    def _expect(self, event_id: str) -> None:
        """An event seen on the bus without a position: poll until it is stored."""
        if len(self._unstored) >= _UNSTORED_MAX:
            self._unstored.pop(next(iter(self._unstored)))
        self._unstored[event_id] = time.monotonic() + _UNSTORED_WAIT
        self._wake.set()

    async def _follow(self) -> None:
        delay = 0.2
        while True:
            timeout = _UNSTORED_POLL if self._unstored else self.settings.poll_interval_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self._catch_up()
            except (EventmillError, OSError) as exc:
                self._problems["store"] = f"the hub cannot read the store: {exc}"
                _log.warning("%s (retrying)", self._problems["store"])
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            except Exception as exc:  # a bug must not stop realtime for good
                self._problems["store"] = f"the hub failed to read the store: {exc!r}"
                _log.exception("the hub failed to read the store (retrying)")
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            self._problems.pop("store", None)
            delay = 0.2

    async def _catch_up(self) -> None:
        if not self.connections:
            # Nobody to push to: move ``head`` to the newest stored position without
            # reading the events. A connection that registers during the read goes live
            # at the old ``head``: then the events after it are read and pushed below.
            newest = await self.feed.head()
            if not self.connections:
                if newest > self.head:
                    self.head = newest
                    self.metrics.head.set(newest)
                self._unstored.clear()  # stored or not, nobody waits for them
                return
        batch_size = self.settings.read_batch
        while True:
            batch = await self.feed.after(self.head, batch_size)
            if batch:
                self.dispatch(batch)
            if len(batch) < batch_size:
                break
            # A read on the event loop's own connection does not yield: let requests,
            # pings and the bus in between two batches of a long burst.
            await asyncio.sleep(0)
        if self._unstored:
            now = time.monotonic()
            for event_id, deadline in list(self._unstored.items()):
                if deadline < now:
                    del self._unstored[event_id]

    def dispatch(self, events: list[FeedEvent]) -> None:
        """Push each event (in position order, after ``head``) to its live connections
        and advance ``head``. Never waits: a connection whose buffer is full is closed.
        An event is serialized only if a connection takes it (once per transport)."""
        by_user, everyone = self._by_user, self._everyone
        unstored = self._unstored
        sent = {"ws": 0, "sse": 0}
        pushed_ids: dict[int, list[str]] = {}
        for event in events:
            position, name = event.position, event.event_name
            pushed = 0
            targets = by_user.get(event.user_id) if event.user_id is not None else None
            for group in (targets, everyone):
                if not group:
                    continue
                for conn in group:
                    if not conn.live or position <= conn.cursor or not conn.wants(name):
                        continue
                    if conn.push_event(event):
                        pushed += 1
                        sent[conn.transport] += 1
            if pushed:
                pushed_ids.setdefault(pushed, []).append(event.id)
            if unstored:
                unstored.pop(event.id, None)
            self.head = position
        if self.journal is not None:
            for count, ids in pushed_ids.items():
                self.journal.hops_many(ids, "pushed", connections=count)
        for kind, count in sent.items():
            if count:
                self.metrics.sent.labels(kind).inc(count)
        self.metrics.head.set(self.head)

    # -- heartbeats ------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        interval = self.settings.heartbeat_seconds
        while True:
            await asyncio.sleep(interval)
            conns = self.all_connections()
            for start in range(0, len(conns), _BEAT_SLICE):
                if start:
                    # A round over 10,000 connections is ~10,000 writes: in slices, so
                    # that a burst of events (and everything else) runs in between.
                    await asyncio.sleep(0)
                self._beat(conns[start : start + _BEAT_SLICE])
            await self.drop_revoked(conns)

    async def drop_revoked(self, conns: list[Connection]) -> int:
        """Close (4001 ``key_revoked``) each of ``conns`` whose API key is revoked or
        gone; return how many. Runs with every heartbeat round, so a revoked key's
        streams end within ``heartbeat_seconds`` on every node (one read of the keys,
        only while some connection uses one)."""
        keyed = [c for c in conns if c.key_id is not None and c.closing is None]
        if not keyed:
            return 0
        try:
            keys = await self.feed.store.api_keys.list(include_revoked=False)
        except (EventmillError, OSError) as exc:
            _log.warning("realtime: could not read the API keys (%s); checking next round", exc)
            return 0
        except Exception:  # a bug must not stop the heartbeats that run this
            _log.exception("realtime: reading the API keys failed; checking next round")
            return 0
        valid = {key.id for key in keys}
        dropped = 0
        for conn in keyed:
            if conn.key_id not in valid:
                conn.close(CloseCode.UNAUTHORIZED, "key_revoked")
                dropped += 1
        return dropped

    def _beat(self, conns: list[Connection]) -> None:
        """A heartbeat to each of ``conns``; a WebSocket connection that got a frame
        since the last round is skipped: it is alive to its client already (the JS
        client's watchdog counts any message), so a burst of events costs no heartbeat
        write after it. SSE keeps its keep-alive comment every interval, as documented
        (proxies and browsers count on it)."""
        head = self.head
        ws_frame = f'{{"type":"heartbeat","position":{head}}}'
        sse_frame = f": keep-alive\nid: {head}\n\n".encode()
        for conn in conns:
            if conn.sent and conn.transport == "ws":
                conn.sent = False
                continue
            # Live: every event up to ``head`` for the connection is queued before
            # this frame, so the client may resume from ``head`` (SSE: an ``id:``
            # without data moves Last-Event-ID without firing an event).
            if not conn.live:
                conn.push_if_room(
                    b": keep-alive\n\n" if conn.transport == "sse" else '{"type":"heartbeat"}'
                )
            elif conn.cursor > head:  # resumed from a position ahead of this hub
                conn.push_if_room(_heartbeat(conn.transport, conn.cursor))
            else:
                conn.push_if_room(ws_frame if conn.transport == "ws" else sse_frame)


def _heartbeat(transport: str, position: int) -> str | bytes:
    if transport == "ws":
        return f'{{"type":"heartbeat","position":{position}}}'
    return f": keep-alive\nid: {position}\n\n".encode()
