"""Outbound requests: each endpoint's own keep-alive connections.

Attempts are sent on httpcore's HTTP/1.1 connections (httpcore is httpx's transport
layer; URLs are parsed by httpx), opened through the SSRF guard
(:class:`~eventmill.delivery.network.GuardedBackend`). Each endpoint's lane owns its
:class:`Connections`: at most one connection per attempt in flight, idle ones kept for
reuse until their keep-alive ends. Neither httpx's client nor its shared pool is used:
the client keeps cookies (one endpoint's cookies would go to another of the same host)
and follows no redirect we want, and the pool looks at every connection, of every
endpoint, for every request; together they cost three times the CPU of this per
request (``benchmarks/bench_delivery.py``).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import Final

import httpcore
import httpx

from eventmill.delivery.network import GuardedBackend

__all__ = ["Answer", "Connections", "Target", "default_ssl_context"]

RESPONSE_BODY_BYTES: Final = 1024
"""How much of a response body an attempt keeps."""

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
    }
)
"""Headers the dispatcher sets: an endpoint's custom headers of these names are ignored."""


def default_ssl_context() -> ssl.SSLContext:
    """The TLS context that checks endpoints' certificates (httpx's default: certifi)."""
    return httpx.create_ssl_context()


@dataclass(frozen=True, slots=True)
class Target:
    """A destination URL, parsed once per endpoint: where to connect and what to send."""

    url: str
    origin: httpcore.Origin
    request_url: httpcore.URL
    headers: tuple[tuple[bytes, bytes], ...]
    """``Host`` and the endpoint's custom headers, encoded."""

    @classmethod
    def parse(cls, url: str, custom: Mapping[str, str]) -> Target:
        """Raises :class:`ValueError` for a URL that is not absolute http(s)."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(str(exc)) from None
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        request_url = httpcore.URL(
            scheme=parsed.raw_scheme,
            host=parsed.raw_host,
            port=parsed.port,
            target=parsed.raw_path,
        )
        headers = [(b"host", parsed.netloc)]
        for name, value in custom.items():
            key = name.lower().encode()
            if key not in _RESERVED:
                headers.append((key, value.encode()))
        return cls(url, request_url.origin, request_url, tuple(headers))


@dataclass(frozen=True, slots=True)
class Answer:
    """What an endpoint answered: status, the headers the dispatcher reads, the first
    :data:`RESPONSE_BODY_BYTES` of the body."""

    status: int
    retry_after: str | None
    body: bytes


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
        self._idle: list[httpcore.AsyncHTTPConnection] = []
        self._origin: httpcore.Origin | None = None

    @property
    def idle(self) -> int:
        """Connections open and waiting for the next attempt."""
        return len(self._idle)

    async def _checkout(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        if origin != self._origin:  # the endpoint's URL changed: not these connections
            await self.close_idle()
            self._origin = origin
        while self._idle:
            conn = self._idle.pop()
            if conn.is_idle() and not conn.has_expired():
                return conn
            await conn.aclose()
        return httpcore.AsyncHTTPConnection(
            origin,
            ssl_context=self._ssl,
            keepalive_expiry=self._keepalive,
            http1=True,
            http2=False,
            retries=0,
            network_backend=self._backend,
        )

    async def post(
        self, target: Target, headers: list[tuple[bytes, bytes]], body: bytes, timeout: float
    ) -> Answer:
        """POST ``body``; raises httpcore's exceptions (the guard's
        :class:`~eventmill.delivery.network.DestinationRefusedError` among them)."""
        conn = await self._checkout(target.origin)
        timeouts = {
            "connect": min(self._connect_timeout, timeout),
            "read": timeout,
            "write": timeout,
            "pool": timeout,
        }
        request = httpcore.Request(
            b"POST",
            target.request_url,
            headers=headers,
            content=body,
            extensions={"timeout": timeouts},
        )
        try:
            response = await conn.handle_async_request(request)
            try:
                chunks: list[bytes] = []
                size = 0
                stream = response.stream
                assert isinstance(stream, AsyncIterable)
                async for chunk in stream:
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= RESPONSE_BODY_BYTES:
                        break
            finally:
                await response.aclose()
        except BaseException:
            await conn.aclose()  # closes at once (never suspends): safe while cancelled
            raise
        if conn.is_idle() and self._origin == target.origin:
            self._idle.append(conn)
        else:
            await conn.aclose()
        retry_after = None
        for name, value in response.headers:
            if name.lower() == b"retry-after":
                retry_after = value.decode("latin-1")
                break
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return Answer(response.status, retry_after, data[:RESPONSE_BODY_BYTES])

    async def close_idle(self, *, expired_only: bool = False) -> None:
        """Close idle connections (only those past their keep-alive, if asked)."""
        keep: list[httpcore.AsyncHTTPConnection] = []
        for conn in self._idle:
            if expired_only and conn.is_idle() and not conn.has_expired():
                keep.append(conn)
            else:
                await conn.aclose()
        self._idle = keep
