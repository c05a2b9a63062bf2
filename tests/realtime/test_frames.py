"""WebSocket frames written straight to uvicorn's transport: a real uvicorn server on
127.0.0.1 and a real ``websockets`` client, which parses every frame it gets (and
closes the connection on a malformed one)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect

from eventmill.realtime import frames
from tests.asgi_server import serving

App = Callable[[Any, Send], Awaitable[None]]
"""What runs once the WebSocket is accepted: given :func:`frames.raw_protocol`'s answer
and the ASGI ``send``."""


@contextlib.asynccontextmanager
async def server(app: App, **config: Any) -> AsyncIterator[str]:
    """uvicorn serving a WebSocket that runs ``app``; yields its ``ws://`` URL."""
    done: list[BaseException | None] = []

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        try:
            await app(frames.raw_protocol(send), send)
            done.append(None)
        except BaseException as exc:
            done.append(exc)
            raise
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async with serving(asgi, **config) as port:
        yield f"ws://127.0.0.1:{port}/"
    if done and done[0] is not None:
        raise done[0]


SIZES = [0, 1, 125, 126, 127, 65_535, 65_536, 300_000]
"""Text lengths around the three header forms (7-bit, 16-bit and 64-bit length)."""


def _text(size: int) -> str:
    """Exactly ``size`` bytes of UTF-8, mostly three-byte characters."""
    return "₹" * (size // 3) + "x" * (size % 3)


async def test_frames_written_to_the_transport_arrive_as_the_texts_in_order() -> None:
    texts = [_text(size) for size in SIZES]
    assert [len(t.encode()) for t in texts] == SIZES

    async def app(proto: Any, send: Send) -> None:
        assert proto is not None  # uvicorn's default protocol, no extension
        for i, text in enumerate(texts):
            assert frames.write_frame(proto, frames.text_frame(text.encode()))
            # ASGI sends in between: one stream, one order
            await send({"type": "websocket.send", "text": f"asgi {i}"})

    async with server(app) as url, connect(url, compression=None, max_size=None) as ws:
        got = [await ws.recv() for _ in range(2 * len(texts))]
    assert got[0::2] == texts
    assert got[1::2] == [f"asgi {i}" for i in range(len(texts))]


async def test_nothing_is_written_directly_once_the_close_is_sent() -> None:
    async def app(proto: Any, send: Send) -> None:
        assert proto is not None
        assert frames.write_frame(proto, frames.text_frame(b"before"))
        await send({"type": "websocket.close", "code": 4003, "reason": "done"})
        assert not frames.write_frame(proto, frames.text_frame(b"after"))

    async with server(app) as url, connect(url, compression=None) as ws:
        assert await ws.recv() == "before"
        await ws.wait_closed()
        assert ws.close_code == 4003


async def test_nothing_is_written_directly_while_the_transport_is_paused() -> None:
    async def app(proto: Any, send: Send) -> None:
        assert proto is not None
        proto.pause_writing()  # what the transport calls when the client's socket is full
        assert not frames.write_frame(proto, frames.text_frame(b"held"))
        proto.resume_writing()
        assert frames.write_frame(proto, frames.text_frame(b"written"))

    async with server(app) as url, connect(url, compression=None) as ws:
        assert await ws.recv() == "written"


async def test_a_compressed_connection_is_written_through_asgi() -> None:
    """With permessage-deflate negotiated a frame must be compressed: no direct writes."""

    async def app(proto: Any, send: Send) -> None:
        assert proto is None

    async with (
        server(app, ws_per_message_deflate=True) as url,
        connect(url, compression="deflate") as ws,
    ):
        await ws.send("bye")


@pytest.mark.parametrize("ws", ["wsproto"])
async def test_other_protocols_are_written_through_asgi(ws: str) -> None:
    async def app(proto: Any, send: Send) -> None:
        assert proto is None

    async with server(app, ws=ws) as url, connect(url, compression=None) as client:
        await client.send("bye")


async def test_a_send_that_is_not_a_servers_method_is_not_recognised() -> None:
    async def send(message: Any) -> None:
        pass

    assert frames.raw_protocol(send) is None
