"""Realtime test helpers: a real ``eventmill serve`` on 127.0.0.1, tokens, publishing,
and WebSocket / SSE clients that collect what they receive."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from eventmill.store import open_store
from tests.ingest.support import RAZORPAY_SECRET, Server

SECRET = "realtime-test-secret-of-at-least-32-bytes"
AUDIENCE = "eventmill-test"
ALLOWED_ORIGIN = "http://allowed.example"


def token(sub: str, /, *, secret: str = SECRET, ttl: float = 3600, **claims: Any) -> str:
    """An HS256 JWT for ``sub`` with the test audience (``claims`` override)."""
    now = int(time.time())
    body: dict[str, Any] = {"sub": sub, "aud": AUDIENCE, "iat": now, "exp": now + int(ttl)}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, "HS256")


def admin_token(sub: str = "operator") -> str:
    """A token whose holder sees every user's events (the ``all_users`` claim)."""
    return token(sub, eventmill={"all_users": True})


def env(data_dir: Path, store_url: str, bus_url: str, **extra: str | None) -> dict[str, str]:
    """Environment of a test server: JWTs (HS256, audience, no leeway), Razorpay;
    ``extra`` overrides (``None`` removes a variable)."""
    values = {
        "EVENTMILL_DATA_DIR": str(data_dir),
        "EVENTMILL_BUS_URL": bus_url,
        "EVENTMILL_STORE_URL": store_url,
        "RAZORPAY_WEBHOOK_SECRET": RAZORPAY_SECRET,
        "EVENTMILL_LOG_LEVEL": "warning",
        "EVENTMILL_FAULT": "",
        "EVENTMILL_JWT__SECRET": SECRET,
        "EVENTMILL_JWT__AUDIENCE": AUDIENCE,
        "EVENTMILL_JWT__LEEWAY_SECONDS": "0",
        "EVENTMILL_REALTIME__ALLOWED_ORIGINS": ALLOWED_ORIGIN,
        "EVENTMILL_RELAY_INTERVAL_SECONDS": "3600",
    }
    values.update({k: v for k, v in extra.items() if v is not None})
    return {k: v for k, v in values.items() if extra.get(k, "") is not None}


async def create_key(store_url: str, scopes: tuple[str, ...] = ("publish", "read")) -> str:
    """A new API key in the store at ``store_url`` (migrating it if new)."""
    store = await open_store(store_url)
    try:
        _, plaintext = await store.api_keys.create("realtime-tests", scopes)
    finally:
        await store.close()
    return plaintext


class Node:
    """One ``eventmill serve`` process and an API key to publish with."""

    def __init__(self, server: Server, key: str) -> None:
        self.server = server
        self.key = key

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http://", "ws://") + "/ws"

    async def publish(self, *events: dict[str, Any]) -> list[str]:
        """POST events to ``/v1/events`` (one batch); return their ids."""
        body = list(events)
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            response = await client.post(
                "/v1/events", json=body, headers={"Authorization": f"Bearer {self.key}"}
            )
        assert response.status_code == 200, response.text
        ids: list[str] = response.json()["ids"]
        return ids


def event(
    user_id: str | None, event_name: str = "test.happened", /, **payload: Any
) -> dict[str, Any]:
    """An event body for ``/v1/events``."""
    return {"event_name": event_name, "source": "tests", "user_id": user_id, "payload": payload}


@contextlib.contextmanager
def running_node(
    tmp: Path, store_url: str, bus_url: str, key: str, **extra: str | None
) -> Iterator[Node]:
    """A started node (stopped and its log kept in ``tmp`` afterwards)."""
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"node-{uuid.uuid4().hex[:6]}.log"
    server = Server(env(tmp / "data", store_url, bus_url, **extra), log)
    server.start()
    try:
        yield Node(server, key)
    finally:
        server.stop()


@contextlib.contextmanager
def embedded_node(
    tmp: Path, scopes: tuple[str, ...] = ("publish", "read"), **extra: str | None
) -> Iterator[Node]:
    """A started node on SQLite files of its own in ``tmp`` (store ``events.db``, bus
    ``bus.db``), publishing with a new key of ``scopes``."""
    store_url = embedded_store_url(tmp)
    key = asyncio.run(create_key(store_url, scopes))
    with running_node(tmp, store_url, f"sqlite:///{tmp / 'bus.db'}", key, **extra) as node:
        yield node


def embedded_store_url(tmp: Path) -> str:
    """The store of :func:`embedded_node` in ``tmp``."""
    return f"sqlite:///{tmp / 'events.db'}"


class WsClient:
    """A WebSocket client that keeps every message it receives, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.received_at: dict[str, float] = {}
        """Event id → when it arrived (``time.monotonic()``)."""
        self.closed: ConnectionClosed | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = orjson.loads(raw)
                self.messages.append(message)
                if message["type"] == "event":
                    self.received_at[message["payload"]["id"]] = time.monotonic()
                self._changed.set()
        except ConnectionClosed as exc:
            self.closed = exc
        else:
            self.closed = ConnectionClosed(self.ws.close_rcvd, self.ws.close_sent)
        self._changed.set()

    def events(self) -> list[dict[str, Any]]:
        """The events received (their Event JSON), in order."""
        return [m["payload"] for m in self.messages if m["type"] == "event"]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        """Wait until ``predicate(self)`` holds (a hang guard, not an assertion)."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                if self.closed is not None and not predicate(self):
                    raise AssertionError(f"closed before the condition held: {self.closed}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_closed(self, timeout: float = 30.0) -> ConnectionClosed:
        async with asyncio.timeout(timeout):
            while self.closed is None:
                self._changed.clear()
                await self._changed.wait()
        return self.closed

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(BaseException):
            await self._task


def close_code(closed: ConnectionClosed) -> int | None:
    """The close code the server sent."""
    return closed.rcvd.code if closed.rcvd is not None else None


def close_reason(closed: ConnectionClosed) -> str | None:
    """The close reason the server sent."""
    return closed.rcvd.reason if closed.rcvd is not None else None


@contextlib.asynccontextmanager
async def ws_client(url: str, **kwargs: Any) -> AsyncIterator[WsClient]:
    """A connected :class:`WsClient` (closed on exit), once the server's first message
    (``connected``, or the error before a refusal's close) arrived: the server accepts
    before it checks the token and registers the connection, and an event published
    in between would be neither live for it nor replayed."""
    async with connect(url, open_timeout=30, **kwargs) as ws:
        client = WsClient(ws)
        try:
            await client.wait_for(lambda c: c.messages or c.closed is not None)
            yield client
        finally:
            await client.close()


class SseClient:
    """An SSE client (httpx streaming) that keeps every event and comment, in order."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.events: list[dict[str, str]] = []
        """Each dispatched block: ``id``, ``event``, ``data``, ``retry`` fields as sent."""
        self.comments: list[str] = []
        self.ended = False
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        block: dict[str, str] = {}
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if block:
                        self.events.append(block)
                        self._changed.set()
                    block = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    self._changed.set()
                else:
                    name, _, value = line.partition(":")
                    block[name] = value[1:] if value.startswith(" ") else value
        except (httpx.HTTPError, asyncio.CancelledError):
            pass
        finally:
            self.ended = True
            self._changed.set()

    def data(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON data of the events named ``name`` (default: every event with data)."""
        return [
            orjson.loads(b["data"])
            for b in self.events
            if "data" in b and (name is None or b.get("event") == name)
        ]

    def last_id(self) -> str | None:
        """The last ``id:`` seen (what a browser sends as ``Last-Event-ID``)."""
        ids = [b["id"] for b in self.events if "id" in b]
        return ids[-1] if ids else None

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                if self.ended and not predicate(self):
                    raise AssertionError("the stream ended before the condition held")
                self._changed.clear()
                await self._changed.wait()

    async def wait_ended(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.ended:
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        await self.response.aclose()


@contextlib.asynccontextmanager
async def sse_client(
    base_url: str, *, headers: dict[str, str] | None = None, **params: str
) -> AsyncIterator[SseClient]:
    """An open :class:`SseClient` on ``/sse`` (closed on exit)."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(30, read=None)) as http,
        http.stream("GET", "/sse", params=params, headers=headers or {}) as response,
    ):
        assert response.status_code == 200, (await response.aread()).decode()
        client = SseClient(response)
        try:
            yield client
        finally:
            await client.close()
