"""Outbound requests: each endpoint's own keep-alive connections.

Each endpoint's lane owns its :class:`Connections`: at most one connection per attempt
in flight, idle ones kept for reuse until their keep-alive ends. Connections are opened
through the SSRF guard (:class:`~eventmill.delivery.network.GuardedBackend`, an httpcore
network backend: TCP, then TLS by ``start_tls``); URLs are parsed by httpx, and TLS
certificates are checked with httpx's default context. The HTTP/1.1 exchange itself
is written here, in a few lines (a POST's head is a join of bytes), and the answer is
parsed by httptools (the C parser, llhttp, that uvicorn serves with) rather than by
httpcore's connection on h11: h11 validates and parses in Python, and that cost about
170 µs of CPU per attempt here, httptools under 30 (``benchmarks/bench_delivery.py``).
Neither httpx's client nor its shared pool is used: the client keeps cookies (one
endpoint's cookies would go to another of the same host) and follows no redirect we
want, and the pool looks at every connection, of every endpoint, for every request.

What the exchange does not accept is an error of httpcore's (the dispatcher's outcome
kinds follow them): a malformed answer, or one cut short, raises
:class:`httpcore.RemoteProtocolError`; a protocol switch (``101``) too. Interim ``1xx``
answers are skipped. An answer's body is read up to :data:`RESPONSE_BODY_BYTES`; a
longer one's connection is dropped rather than drained.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import httpcore
import httptools
import httpx

from eventmill.delivery.network import GuardedBackend

__all__ = ["Answer", "Connections", "Target", "default_ssl_context"]

RESPONSE_BODY_BYTES: Final = 1024
"""How much of a response body an attempt keeps."""

_READ_SIZE: Final = 64 * 1024

_RESERVED: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"content-type",
        b"user-agent",
        b"webhook-id",
        b"webhook-timestamp",
        b"webhook-signature",
        b"traceparent",
        b"content-encoding",
        b"expect",
    }
)
"""Headers the dispatcher sets (or that would misdescribe the request): an endpoint's
custom headers of these names, stored before they were refused, are ignored."""

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE: Final = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
"""A header value: no control character but tab (so no line break can be smuggled in)."""


def default_ssl_context() -> ssl.SSLContext:
    """The TLS context that checks endpoints' certificates (httpx's default: certifi)."""
    context = httpx.create_ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


@dataclass(frozen=True, slots=True)
class Target:
    """A destination URL, parsed once per endpoint: where to connect and what to send."""

    url: str
    origin: httpcore.Origin
    path: bytes
    """The request target: path and query, percent-encoded."""
    headers: tuple[tuple[bytes, bytes], ...]
    """``Host`` and the endpoint's custom headers, encoded."""
    head: bytes
    """``POST <path> HTTP/1.1`` and those headers, as they go on the wire."""

    @classmethod
    def parse(cls, url: str, custom: Mapping[str, str]) -> Target:
        """Raises :class:`ValueError` for a URL that is not absolute http(s), or a custom
        header that cannot be sent."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(str(exc)) from None
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        origin = httpcore.Origin(parsed.raw_scheme, parsed.raw_host, port)
        headers = [(b"host", parsed.netloc)]
        for name, value in custom.items():
            key = name.lower().encode("latin-1", "replace")
            raw = value.strip().encode("utf-8")
            if _TOKEN.fullmatch(key) is None or _VALUE.fullmatch(raw) is None:
                raise ValueError(f"header {name!r} cannot be sent")
            if key not in _RESERVED:
                headers.append((key, raw))
        path = parsed.raw_path
        head = b"POST %s HTTP/1.1\r\n%s" % (path, b"".join(b"%s: %s\r\n" % h for h in headers))
        return cls(url, origin, path, tuple(headers), head)


@dataclass(frozen=True, slots=True)
class Answer:
    """What an endpoint answered: status, the headers the dispatcher reads, the first
    :data:`RESPONSE_BODY_BYTES` of the body."""

    status: int
    retry_after: str | None
    body: bytes


class _Reader:
    """httptools' callbacks: one answer at a time on one connection."""

    __slots__ = (
        "body",
        "complete",
        "extra",
        "framed",
        "keep_alive",
        "parser",
        "retry_after",
        "size",
        "status",
    )

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reset()
        self.extra = False

    def reset(self) -> None:
        self.status = 0
        self.retry_after: str | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.framed = False
        """Whether the answer says where its body ends (a length, or chunks)."""
        self.keep_alive = False

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the answer: the connection is not reusable
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"retry-after":
            self.retry_after = value.decode("latin-1")
        elif name in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        if self.size < RESPONSE_BODY_BYTES:
            self.body.append(data[: RESPONSE_BODY_BYTES - self.size])
        self.size += len(data)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200 and self.status != 101:
            self.reset()  # an interim answer: the final one follows
        else:
            self.complete = True


class _Connection:
    """One keep-alive connection: its stream and its answer parser."""

    __slots__ = ("expires", "reader", "stream")

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self.stream = stream
        self.reader = _Reader()
        self.expires = 0.0

    def usable(self) -> bool:
        """Idle, within its keep-alive, not closed (nor written to) by the server."""
        return time.monotonic() < self.expires and not self.stream.get_extra_info("is_readable")

    async def exchange(self, data: bytes, timeout: float) -> tuple[Answer, bool]:
        """Send a request (``data``: head and body); return the answer and whether the
        connection may be used again."""
        reader = self.reader
        reader.reset()
        stream = self.stream
        await stream.write(data, timeout)
        while True:
            chunk = await stream.read(_READ_SIZE, timeout)
            if not chunk:
                if reader.status >= 200 and not reader.framed:  # body ends at close
                    break
                if reader.status:
                    raise httpcore.RemoteProtocolError(
                        "the server closed the connection before its answer was complete"
                    )
                raise httpcore.RemoteProtocolError("the server closed the connection unanswered")
            try:
                reader.parser.feed_data(chunk)
            except httptools.HttpParserUpgrade:
                raise httpcore.RemoteProtocolError("the server switched protocols") from None
            except httptools.HttpParserError as exc:
                raise httpcore.RemoteProtocolError(f"malformed answer: {exc}") from None
            if reader.complete:
                break
            if reader.size >= RESPONSE_BODY_BYTES:  # long: keep its start, drop the rest
                reader.keep_alive = False
                break
        body = reader.body[0] if len(reader.body) == 1 else b"".join(reader.body)
        answer = Answer(reader.status, reader.retry_after, body)
        return answer, reader.complete and reader.keep_alive and not reader.extra


class Connections:
    """One endpoint's HTTP/1.1 keep-alive connections (see the module docstring)."""

    def __init__(
        self,
        backend: GuardedBackend,
        ssl_context: ssl.SSLContext,
        *,
        connect_timeout: float,
        keepalive: float = 5.0,
    ) -> None:
        self._backend = backend
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._idle: list[_Connection] = []
        self._origin: httpcore.Origin | None = None

    @property
    def idle(self) -> int:
        """Connections open and waiting for the next attempt."""
        return len(self._idle)

    async def _checkout(self, origin: httpcore.Origin, timeout: float) -> _Connection:
        if origin != self._origin:  # the endpoint's URL changed: not these connections
            await self.close_idle()
            self._origin = origin
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            await conn.stream.aclose()
        connect = min(self._connect_timeout, timeout)
        host = origin.host.decode("ascii")
        stream = await self._backend.connect_tcp(host, origin.port, timeout=connect)
        if origin.scheme == b"https":
            try:
                stream = await stream.start_tls(self._ssl, server_hostname=host, timeout=connect)
            except BaseException:
                await stream.aclose()
                raise
        return _Connection(stream)

    async def post(
        self, target: Target, headers: list[tuple[bytes, bytes]], body: bytes, timeout: float
    ) -> Answer:
        """POST ``body`` with ``target``'s head and ``headers`` (the caller's, which
        include ``content-length``); raises httpcore's exceptions (the guard's
        :class:`~eventmill.delivery.network.DestinationRefusedError` among them)."""
        conn = await self._checkout(target.origin, timeout)
        data = b"%s%s\r\n%s" % (
            target.head,
            b"".join(b"%s: %s\r\n" % h for h in headers),
            body,
        )
        try:
            answer, reusable = await conn.exchange(data, timeout)
        except BaseException:
            await conn.stream.aclose()  # closes at once (never suspends): safe while cancelled
            raise
        if reusable and self._origin == target.origin:
            conn.expires = time.monotonic() + self._keepalive
            self._idle.append(conn)
        else:
            await conn.stream.aclose()
        return answer

    async def close_idle(self, *, expired_only: bool = False) -> None:
        """Close idle connections (only those past their keep-alive, if asked)."""
        keep: list[_Connection] = []
        for conn in self._idle:
            if expired_only and conn.usable():
                keep.append(conn)
            else:
                await conn.stream.aclose()
        self._idle = keep
