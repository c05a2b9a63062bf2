"""WebSocket text frames written straight to the connection's transport.

uvicorn's default WebSocket protocol (``websockets-sansio``) writes a text message by
framing it with websockets' sans-I/O ``Protocol`` in Python and handing the bytes to
``transport.write``. The hub writes one event to each of thousands of connections in
a burst, where every microsecond a frame costs adds up (2 cores, Intel Xeon: websockets'
framing takes ~1.5 µs a frame, :func:`text_frame` ~0.25 µs, besides the coroutine of
the ASGI ``send``). A server frame is simple (unmasked, one fragment, no extension: a
2-, 4- or 10-byte header and the UTF-8 text), so :func:`write_frame` writes those bytes
itself, built once for every connection an event goes to.

It does so only for a connection :func:`raw_protocol` recognized as uvicorn's
``websockets-sansio`` protocol without a negotiated extension (eventmill serves with
permessage-deflate off), and only while that protocol would have written the frame at
once: handshake done, open, no close sent, the transport not paused. Otherwise it
returns ``False`` and the caller goes through ASGI ``send``, which waits, raises or
closes as the server decides. Any other server (or a later uvicorn whose protocol
looks different) gets ASGI ``send`` for every frame.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from starlette.types import Send
from websockets.protocol import Protocol, Side, State

__all__ = ["raw_protocol", "text_frame", "write_frame"]

_MEDIUM: Final = struct.Struct("!BBH")
_LARGE: Final = struct.Struct("!BBQ")
_TEXT: Final = 0x81
"""FIN and the text opcode: a whole message in one frame."""
_ATTRIBUTES: Final = (
    "transport",
    "conn",
    "writable",
    "disconnected",
    "close_sent",
    "handshake_complete",
    "initial_response",
)


def raw_protocol(send: Send) -> Any | None:
    """The uvicorn ``websockets-sansio`` protocol behind ``send`` when its frames may be
    written with :func:`write_frame` (call once the WebSocket is accepted), else
    ``None``."""
    proto: Any = getattr(send, "__self__", None)
    kind = type(proto)
    if kind.__name__ != "WebSocketsSansIOProtocol" or not kind.__module__.startswith("uvicorn."):
        return None
    if not all(hasattr(proto, name) for name in _ATTRIBUTES):
        return None
    conn = proto.conn
    if not isinstance(conn, Protocol) or conn.side is not Side.SERVER or conn.extensions:
        return None
    if not proto.handshake_complete or proto.initial_response is not None:
        return None
    return proto


def text_frame(data: bytes) -> bytes:
    """``data`` (UTF-8 text) as one unmasked WebSocket text frame, header included."""
    size = len(data)
    if size < 126:
        return bytes((_TEXT, size)) + data
    if size < 65536:
        return _MEDIUM.pack(_TEXT, 126, size) + data
    return _LARGE.pack(_TEXT, 127, size) + data


def write_frame(proto: Any, frame: bytes) -> bool:
    """Write ``frame`` (from :func:`text_frame`) on ``proto``'s transport (a protocol
    from :func:`raw_protocol`) if the protocol would write it at once; return whether
    it was written."""
    if (
        proto.close_sent
        or proto.disconnected
        or proto.conn.state is not State.OPEN
        or not proto.writable.is_set()
    ):
        return False
    transport = proto.transport
    if transport.is_closing():
        return False
    transport.write(frame)
    return True
