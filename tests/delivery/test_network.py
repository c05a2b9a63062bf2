"""The SSRF guard: destinations are checked at send time, on the address connected to."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from eventmill.delivery.http import Connections, Target, default_ssl_context
from eventmill.delivery.network import AddressPolicy, DestinationRefusedError, GuardedBackend
from tests.delivery.support import delivery_settings, receiver, service


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "100.64.0.1",
        "224.0.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        # IPv6 carrying a non-public IPv4 address, and site-local
        "64:ff9b::7f00:1",  # NAT64 (well-known prefix) to 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 to the metadata address
        "64:ff9b:1::a00:1",  # NAT64 (local-use prefix) to 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "::127.0.0.1",  # IPv4-compatible
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, client 192.0.2.45
        "fec0::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert AddressPolicy().refusal(address) is not None


def test_public_and_allowed_addresses_pass() -> None:
    assert AddressPolicy().refusal("93.184.216.34") is None
    assert AddressPolicy(["127.0.0.0/8"]).refusal("127.0.0.1") is None
    assert AddressPolicy(["127.0.0.0/8"]).refusal("10.0.0.1") is not None
    assert AddressPolicy().refusal("64:ff9b::808:808") is None  # NAT64 to a public one
    assert AddressPolicy().refusal("2606:4700::1111") is None


async def test_a_name_resolving_to_loopback_is_refused_at_connect_time() -> None:
    """A name that points at a refused address when the request is made (DNS rebinding)
    is refused: the check runs on what the name resolves to at connect time."""
    resolved: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    async with receiver() as rec:
        target = Target.parse(f"http://rebind.test:{rec.port}/hook", {})
        headers = [(b"content-length", b"2")]
        guarded = Connections(
            GuardedBackend(AddressPolicy(), rebinding), default_ssl_context(), connect_timeout=5
        )
        with pytest.raises(DestinationRefusedError, match=r"127\.0\.0\.1 is a loopback address"):
            await guarded.post(target, headers, b"{}", 5)
        assert resolved == ["rebind.test"]
        assert rec.received == []
        allowed = Connections(
            GuardedBackend(AddressPolicy(["127.0.0.0/8"]), rebinding),
            default_ssl_context(),
            connect_timeout=5,
        )
        answer = await allowed.post(target, headers, b"{}", 5)
        await allowed.close_idle()
        assert answer.status == 200
        assert rec.received[0].headers["host"] == f"rebind.test:{rec.port}"


async def test_a_private_destination_is_refused_without_the_allow_list(
    tmp_path: Path, store_url: str
) -> None:
    settings = delivery_settings(tmp_path, store_url, allow_networks=[], retry_schedule=[0])
    async with receiver() as rec, service(settings) as svc:
        # a name passes creation; it is refused when the attempt resolves it
        await svc.create_endpoint(url=f"http://localhost:{rec.port}/hook", user_id="u1")
        [event_id] = await svc.publish({"event_name": "x.y", "user_id": "u1"})
        [d] = await svc.wait_delivery(
            {"event_id": event_id}, lambda ds: bool(ds) and ds[0]["status"] == "failed"
        )
        detail = await svc.get(f"/v1/deliveries/{d['id']}")
        assert detail["history"][0]["outcome"] == "refused"
        assert "loopback" in detail["history"][0]["error"]
        await asyncio.sleep(0)
        assert rec.received == []
