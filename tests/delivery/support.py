"""Helpers for delivery tests: a real HTTP receiver on 127.0.0.1 (uvicorn serving a
Starlette app in the test's event loop), the app with an admin key, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from eventmill.app import resources_of
from eventmill.settings import Settings
from tests.asgi_server import serving
from tests.ingest.support import running_app, settings_for

LOCAL = ["127.0.0.0/8"]


@dataclass
class Received:
    """One request a receiver got."""

    at: float
    """``time.monotonic()`` when it arrived."""
    path: str
    headers: dict[str, str]
    body: bytes


Script = Callable[[Request, int], Awaitable[Response] | Response]
"""Answers the ``n``-th request (0-based) to a path."""


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 recording every request; ``script`` answers."""

    script: Script | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _counts: dict[str, int] = field(default_factory=dict)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        path = scope["path"]
        n = self._counts.get(path, 0)
        self._counts[path] = n + 1
        self.received.append(
            Received(
                time.monotonic(), path, {k.lower(): v for k, v in request.headers.items()}, body
            )
        )
        self._arrived.set()
        response: Response
        if self.script is None:
            response = Response(b"ok", status_code=200)
        else:
            answer = self.script(request, n)
            response = await answer if asyncio.iscoroutine(answer) else answer  # type: ignore[assignment]
        await response(scope, receive, send)

    def at(self, path: str = "/hook") -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(
        self, condition: Callable[[], bool], timeout: float = 30.0, what: str = "requests"
    ) -> None:
        """Wait until ``condition()`` holds (a hang guard, not a timed assertion)."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), 0.2)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}: got {len(self.received)}"
            ) from None


@contextlib.asynccontextmanager
async def receiver(script: Script | None = None) -> AsyncIterator[Receiver]:
    """Serve a :class:`Receiver` on a free port of 127.0.0.1 for the block's duration."""
    rec = Receiver(script)
    async with serving(rec) as port:
        rec.port = port
        yield rec


def delivery_settings(tmp: Path, store_url: str, **delivery: Any) -> Settings:
    """Settings for delivery tests: memory bus, the store, loopback allowed, quick polls."""
    values: dict[str, Any] = {
        "allow_networks": LOCAL,
        "poll_interval_seconds": 0.1,
        "retry_schedule": [0, 0.2, 0.5],
    }
    values.update(delivery)
    return settings_for(tmp, store_url, delivery=values, audit_enabled=False)


@dataclass
class Service:
    """The app with its lifespan running, a client, and an admin + publish key."""

    app: FastAPI
    client: httpx.AsyncClient
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def create_endpoint(self, **body: Any) -> dict[str, Any]:
        response = await self.client.post("/v1/endpoints", json=body, headers=self.auth)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def publish(self, *events: dict[str, Any]) -> list[str]:
        response = await self.client.post("/v1/events", json=list(events), headers=self.auth)
        assert response.status_code == 200, response.text
        ids: list[str] = response.json()["ids"]
        return ids

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=self.auth)
        assert response.status_code == 200, response.text
        return response.json()

    async def wait_delivery(
        self,
        delivery_filter: dict[str, Any],
        done: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll ``GET /v1/deliveries`` until ``done(deliveries)`` (a hang guard)."""
        async with asyncio.timeout(timeout):
            while True:
                found = (await self.get("/v1/deliveries", **delivery_filter))["deliveries"]
                if done(found):
                    return list(found)
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[Service]:
    """The app running with ``settings``, and a key with scopes admin and publish."""
    async with running_app(settings) as (app, client):
        _, key = await resources_of(app).require_keys().create("test", {"admin", "publish"})
        yield Service(app, client, key)
