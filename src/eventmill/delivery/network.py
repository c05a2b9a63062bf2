"""The SSRF guard: outbound connections only to public addresses, unless allowed.

The check runs when a connection is opened, on the addresses the destination's name
resolves to at that moment, and the connection is made to the very address that was
checked (then its peer address is checked once more). A name that resolved to a
public address when the endpoint was created and to ``127.0.0.1`` now (DNS rebinding)
is refused, as is any address that is loopback, private, link-local, multicast,
shared (CGNAT), reserved, unspecified or a cloud metadata address, unless it lies in
``delivery.allow_networks``.

httpx opens connections through httpcore's network backend; :func:`guarded_transport`
builds httpx's own transport over a connection pool whose backend is
:class:`GuardedBackend`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import httpcore
import httpx

__all__ = [
    "AddressPolicy",
    "DestinationRefusedError",
    "GuardedBackend",
    "Resolver",
    "guarded_transport",
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


class DestinationRefusedError(httpcore.ConnectError):
    """The destination resolved only to addresses the SSRF guard refuses."""


class AddressPolicy:
    """Which addresses outbound deliveries may connect to."""

    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` is refused, or ``None`` when it may be connected to."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
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


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend behind the SSRF check of :class:`AddressPolicy`."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self._resolve = resolver or _getaddrinfo
        self._inner = httpcore.AnyIOBackend()

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


def guarded_transport(
    policy: AddressPolicy,
    *,
    max_connections: int,
    max_keepalive: int,
    resolver: Resolver | None = None,
) -> httpx.AsyncHTTPTransport:
    """httpx's transport (HTTP/1.1, no proxies from the environment, no retries) whose
    connections are opened by :class:`GuardedBackend`."""
    transport = httpx.AsyncHTTPTransport(trust_env=False, retries=0)
    # The transport keeps its httpcore pool in ``_pool``; it takes no network backend
    # argument, so the pool is made again with the guarded one (same settings).
    old = transport._pool
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=old._ssl_context,
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive,
        keepalive_expiry=5.0,
        http1=True,
        http2=False,
        retries=0,
        network_backend=GuardedBackend(policy, resolver),
    )
    return transport
