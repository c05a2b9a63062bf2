"""The SSRF guard: outbound connections only to public addresses, unless allowed.

The check runs when a connection is opened, on the addresses the destination's name
resolves to at that moment, and the connection is made to the very address that was
checked (then its peer address is checked once more). A name that resolved to a
public address when the endpoint was created and to ``127.0.0.1`` now (DNS rebinding)
is refused, as is any address that is loopback, private, link-local, multicast,
shared (CGNAT), reserved, unspecified, site-local or a cloud metadata address, unless
it lies in ``delivery.allow_networks``. An IPv6 address that carries an IPv4 address
(IPv4-mapped and -compatible, 6to4, Teredo, NAT64's ``64:ff9b::/96`` and
``64:ff9b:1::/48``) is judged by that IPv4 address too: ``[64:ff9b::7f00:1]`` is
``127.0.0.1`` behind a NAT64 gateway.

Each endpoint's connections (:mod:`eventmill.delivery.http`) are opened through
:class:`GuardedBackend` (httpcore's network backend interface), over
:class:`AsyncioBackend`: sockets on asyncio's own transports rather than anyio's
streams (httpcore's default), which costs less CPU per request: a request's writes go
out in one ``send`` when its answer is read, and an idle connection's "closed by the
server?" check, made before each reuse, reads a flag instead of making two system
calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, cast

import httpcore

__all__ = [
    "AddressPolicy",
    "AsyncioBackend",
    "DestinationRefusedError",
    "GuardedBackend",
    "Resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves ``(host, port)`` to IP address strings (default: the loop's getaddrinfo)."""

METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)


_NAT64: Final = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE: Final = ipaddress.ip_network("::/96")


def _carried(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, by any of the standard embeddings."""
    out: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if any(ip in net for net in _NAT64) or (ip in _COMPATIBLE and int(ip) > 1):
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


class DestinationRefusedError(httpcore.ConnectError):
    """The destination resolved only to addresses the SSRF guard refuses."""


class AddressPolicy:
    """Which addresses outbound deliveries may connect to."""

    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` is refused, or ``None`` when it may be connected to."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:  # the IPv4 address itself, on a dual stack
                return self._refusal(ip.ipv4_mapped)
            for inner in _carried(ip):
                reason = self._refusal(inner)
                if reason is not None:
                    return f"{ip} carries {reason}"
        return self._refusal(ip)

    def _refusal(self, ip: IPAddress) -> str | None:
        if any(ip in net for net in self.allowed):
            return None
        if ip in METADATA_ADDRESSES:
            kind = "a cloud metadata address"
        elif ip.is_loopback:
            kind = "a loopback address"
        elif ip.is_link_local:
            kind = "a link-local address"
        elif ip.is_multicast:
            kind = "a multicast address"
        elif ip.is_unspecified:
            kind = "the unspecified address"
        elif isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
            kind = "a site-local address"
        elif ip.is_private:
            kind = "a private address"
        elif not ip.is_global:
            kind = "not a public address"
        else:
            return None
        return f"{ip} is {kind} (not in delivery.allow_networks)"


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    seen: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


_READ_HIGH_WATER: Final = 256 * 1024
"""Bytes read ahead of the reader before the socket stops being read."""
_WRITE_COALESCE: Final = 64 * 1024
"""Bytes of writes held back (until the next read) before they are sent at once."""


class _Protocol(asyncio.Protocol):
    """Buffers what a connection receives for :class:`AsyncioStream` (bounded: reading
    pauses past :data:`_READ_HIGH_WATER`)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.paused = False
        self.can_write = True
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not a subclass of asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()
        if len(self.buffer) > _READ_HIGH_WATER and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self.can_write = True
        self._wake()
        self._wake_drain()

    def pause_writing(self) -> None:
        self.can_write = False

    def resume_writing(self) -> None:
        self.can_write = True
        self._wake_drain()

    def take(self, max_bytes: int) -> bytes:
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self.paused and len(self.buffer) < _READ_HIGH_WATER // 4 and self.transport:
            self.paused = False
            self.transport.resume_reading()
        return data

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """A connection on an asyncio transport. Writes are held back until the next read
    (or until :data:`_WRITE_COALESCE` bytes), so a request's head and body leave in one
    ``send``."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pending: list[bytes] = []
        self._pending_size = 0

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(data)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._flush()
        protocol = self._protocol
        if not protocol.buffer and not protocol.eof:
            waiter = protocol.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                raise httpcore.ReadTimeout(f"no data within {timeout} s") from None
            finally:
                protocol.waiter = None
        if protocol.buffer:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore.ReadError(str(protocol.error)) from protocol.error
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._pending.append(buffer)
        self._pending_size += len(buffer)
        if self._pending_size < _WRITE_COALESCE:
            return
        self._flush()
        protocol = self._protocol
        if not protocol.can_write:
            waiter = protocol.drain_waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                raise httpcore.WriteTimeout(f"could not send within {timeout} s") from None
            finally:
                protocol.drain_waiter = None
            if protocol.error is not None:
                raise httpcore.WriteError(str(protocol.error)) from protocol.error

    async def aclose(self) -> None:
        self._pending.clear()
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self._flush()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout(f"TLS handshake not done within {timeout} s") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(f"TLS handshake failed: {exc}") from exc
        if transport is None:  # pragma: no cover - asyncio answers None only if closing
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle connection the server closed (or wrote to)
            return self._protocol.eof or bool(self._protocol.buffer)
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio's transports (TCP; TLS by ``start_tls``)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = None if local_address is None else (local_address, 0)
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _Protocol, host, port, local_addr=local
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - never used for deliveries
        raise httpcore.ConnectError("unix sockets are not supported")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend behind the SSRF check of :class:`AddressPolicy`."""

    def __init__(
        self,
        policy: AddressPolicy,
        resolver: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self._resolve = resolver or _getaddrinfo
        self._inner = inner or AsyncioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        literal = _literal(host)
        if literal is not None:
            candidates: Sequence[str] = [str(literal)]
        else:
            try:
                async with asyncio.timeout(timeout):
                    candidates = await self._resolve(host, port)
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        allowed = [a for a in candidates if self.policy.refusal(a) is None]
        if not allowed:
            reasons = "; ".join(str(self.policy.refusal(a)) for a in candidates) or "no address"
            raise DestinationRefusedError(f"destination {host} refused: {reasons}")
        last: Exception | None = None
        for address in allowed:
            try:
                stream = await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            peer = stream.get_extra_info("server_addr")
            reason = self.policy.refusal(str(peer[0])) if peer else None
            if reason is not None:  # pragma: no cover - connected where we did not ask
                await stream.aclose()
                raise DestinationRefusedError(f"destination {host} refused: {reason}")
            return stream
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefusedError("unix sockets are not delivery destinations")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
