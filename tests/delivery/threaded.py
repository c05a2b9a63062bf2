"""A receiver served by uvicorn in a thread of its own (for tests whose main thread
blocks, e.g. while starting ``eventmill serve``): counts distinct webhook-ids by path."""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from typing import Any

import orjson
import uvicorn


class CountingReceiver:
    """Answers 200 (or hangs, on paths under ``/hang``) and records, per path, every
    webhook-id and every event id it got, and every request's arrival."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: dict[str, set[str]] = defaultdict(set)
        self.events: dict[str, set[str]] = defaultdict(set)
        self.requests: dict[str, int] = defaultdict(int)
        self.arrivals: list[tuple[str, str, float]] = []
        """(path, event id, time.time())."""
        self.hanging: dict[str, int] = defaultdict(int)
        """Requests held on each ``/hang`` path (answered never)."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", access_log=False, interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]})

    def started(self, path: str) -> bool:
        """Whether a request on ``path`` (a ``/hang`` one) is being held."""
        with self.lock:
            return self.hanging[path] > 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path.startswith("/hang"):
            import asyncio

            with self.lock:
                self.hanging[path] += 1
            await asyncio.sleep(3600)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        event_id = orjson.loads(body).get("id", "")
        with self.lock:
            self.ids[path].add(headers.get("webhook-id", ""))
            self.events[path].add(event_id)
            self.requests[path] += 1
            self.arrivals.append((path, event_id, time.time()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def __enter__(self) -> CountingReceiver:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("receiver did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(10)
        self._sock.close()
