"""Who may connect, over real sockets: JWTs (query, header, cookie), API keys, bad and
expired tokens with their documented close codes, the origin allow-list, a token
expiring while connected, and the same refusals on SSE as HTTP errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from eventmill.realtime import CloseCode
from eventmill.store import open_store
from tests.realtime.support import (
    ALLOWED_ORIGIN,
    AUDIENCE,
    Node,
    close_code,
    close_reason,
    create_key,
    embedded_node,
    embedded_store_url,
    event,
    running_node,
    sse_client,
    token,
    ws_client,
)

pytestmark = pytest.mark.slow

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_PUBLIC_PEM = (
    _RSA.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(sub: str) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "aud": AUDIENCE, "iat": now, "exp": now + 3600}


def _unsigned(sub: str) -> str:
    """``alg: none``: no signature at all."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(_claims(sub)).encode())}."


def _hmac_with_public_key(sub: str) -> str:
    """Algorithm confusion: HS256 "signed" with the server's RSA public key."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims(sub)).encode())
    sig = hmac.new(_PUBLIC_PEM.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(sig)}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("realtime-access")
    store_url = f"sqlite:///{tmp / 'events.db'}"
    key = asyncio.run(create_key(store_url))
    bus_url = f"sqlite:///{tmp / 'bus.db'}"
    with running_node(tmp, store_url, bus_url, key, EVENTMILL_LOG_LEVEL="info") as node:
        yield node


@pytest.fixture(scope="module")
def rsa_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("realtime-rsa")
    store_url = f"sqlite:///{tmp / 'events.db'}"
    key = asyncio.run(create_key(store_url))
    pem = tmp / "public.pem"
    pem.write_text(_PUBLIC_PEM)
    extra = {"EVENTMILL_JWT__SECRET": None, "EVENTMILL_JWT__PUBLIC_KEY": str(pem)}
    with running_node(tmp, store_url, f"sqlite:///{tmp / 'bus.db'}", key, **extra) as node:
        yield node


def _user() -> str:
    return f"user_{uuid.uuid4().hex[:8]}"


async def _refused(url: str, **kwargs: Any) -> tuple[int | None, str, dict[str, Any]]:
    """Connect, and return the close code, reason and the error message sent first."""
    async with ws_client(url, **kwargs) as client:
        closed = await client.wait_closed()
    [error] = client.of("error")
    assert client.of("connected") == [], "a refused client got a connection"
    return close_code(closed), closed.rcvd.reason if closed.rcvd else "", error


BAD_TOKENS = {
    "missing": (None, CloseCode.UNAUTHORIZED, "token_missing"),
    "garbage": ("not-a-jwt", CloseCode.UNAUTHORIZED, "token_malformed"),
    "expired": ("expired", CloseCode.TOKEN_EXPIRED, "token_expired"),
    "wrong audience": ("wrong_aud", CloseCode.UNAUTHORIZED, "token_bad_audience"),
    "alg none": ("none", CloseCode.UNAUTHORIZED, "token_algorithm_not_allowed"),
    "wrongly signed": ("wrong_key", CloseCode.UNAUTHORIZED, "token_bad_signature"),
    "no subject": ("no_sub", CloseCode.UNAUTHORIZED, "token_no_subject"),
    "subject too long": ("long_sub", CloseCode.UNAUTHORIZED, "token_no_subject"),
    "NUL in subject": ("nul_sub", CloseCode.UNAUTHORIZED, "token_no_subject"),
}


def _bad(kind: str | None) -> str | None:
    sub = _user()
    return {
        None: None,
        "not-a-jwt": "not-a-jwt",
        "expired": token(sub, ttl=-60),
        "wrong_aud": token(sub, aud="someone-else"),
        "none": _unsigned(sub),
        "wrong_key": token(sub, secret="another-secret-that-is-32-bytes-long!"),
        "no_sub": token(sub, sub=None),
        "long_sub": token("x" * 1000),
        "nul_sub": token("a\x00b"),
    }[kind]


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_are_refused_with_their_close_code(node: Node, case: str) -> None:
    kind, code, reason = BAD_TOKENS[case]
    bad = _bad(kind)
    url = node.ws_url if bad is None else f"{node.ws_url}?token={bad}"
    got_code, got_reason, error = await _refused(url)
    assert (got_code, got_reason) == (code, reason)
    assert error["error"] == reason
    if bad is not None:
        assert bad not in error["message"]


async def test_a_token_in_the_header_or_the_cookie_is_accepted(node: Node) -> None:
    alice = _user()
    bearer = {"Authorization": f"Bearer {token(alice)}"}
    cookie = {"Cookie": f"eventmill_token={token(alice)}"}
    for headers in (bearer, cookie):
        async with ws_client(node.ws_url, additional_headers=headers) as client:
            await client.wait_for(lambda c: c.of("connected"))
            assert client.of("connected")[0]["user_id"] == alice


async def test_api_keys_with_read_scope_see_every_user_and_others_are_refused(
    node: Node, tmp_path: Path
) -> None:
    async with ws_client(f"{node.ws_url}?token={node.key}") as ops:  # publish + read
        await ops.wait_for(lambda c: c.of("connected"))
        assert ops.of("connected")[0]["all_users"] is True
        ids = await node.publish(event(_user()), event(None))
        await ops.wait_for(lambda c: ids[-1] in [e["id"] for e in c.events()])
    revoked = "em_" + "x" * 40
    code, reason, _ = await _refused(f"{node.ws_url}?token={revoked}")
    assert (code, reason) == (CloseCode.UNAUTHORIZED, "invalid_api_key")


async def test_forbidden_origin_is_refused_and_allowed_ones_connect(node: Node) -> None:
    alice = _user()
    url = f"{node.ws_url}?token={token(alice)}"
    code, reason, error = await _refused(url, origin="https://evil.example")
    assert (code, reason) == (CloseCode.FORBIDDEN_ORIGIN, "forbidden_origin")
    assert error["error"] == "forbidden_origin"
    same = node.url  # the service's own origin
    for origin in (ALLOWED_ORIGIN, same):
        async with ws_client(url, origin=origin) as client:
            await client.wait_for(lambda c: c.of("connected"))


async def test_a_token_expiring_while_connected_closes_with_its_code(node: Node) -> None:
    alice = _user()
    async with ws_client(f"{node.ws_url}?token={token(alice, ttl=2)}") as client:
        await client.wait_for(lambda c: c.of("connected"))
        closed = await client.wait_closed(timeout=30)
    assert close_code(closed) == CloseCode.TOKEN_EXPIRED
    assert close_reason(closed) == "token_expired"


def test_a_revoked_keys_streams_are_closed_and_others_stay(tmp_path: Path) -> None:
    """A read key sees every user's events: revoking it ends its open WebSocket (4001
    ``key_revoked``) and SSE streams (a last ``key_revoked`` event) within a heartbeat
    round; a connection with another key goes on."""

    async def scenario(node: Node) -> None:
        store = await open_store(embedded_store_url(tmp_path))
        try:
            record, leaked = await store.api_keys.create("leaked", ["read"])
            async with (
                ws_client(f"{node.ws_url}?token={leaked}") as ws,
                ws_client(f"{node.ws_url}?token={node.key}") as other,
                sse_client(node.url, token=leaked) as sse,
            ):
                await ws.wait_for(lambda c: c.of("connected"))
                await other.wait_for(lambda c: c.of("connected"))
                ids = await node.publish(event(_user()))
                await sse.wait_for(lambda c: ids[0] in [d["id"] for d in c.data()])
                assert await store.api_keys.revoke(record.id)
                closed = await ws.wait_closed()
                await sse.wait_ended()
                later = await node.publish(event(_user()))
                await other.wait_for(lambda c: later[0] in [e["id"] for e in c.events()])
                assert other.closed is None
        finally:
            await store.close()
        assert (close_code(closed), close_reason(closed)) == (
            CloseCode.UNAUTHORIZED,
            "key_revoked",
        )
        assert [d["error"] for d in sse.data("key_revoked")] == ["key_revoked"]
        assert later[0] not in [e["id"] for e in ws.events()]

    with embedded_node(tmp_path, EVENTMILL_REALTIME__HEARTBEAT_SECONDS="0.5") as node:
        asyncio.run(scenario(node))


async def test_refresh_moves_the_expiry_for_the_same_user_only(node: Node) -> None:
    alice = _user()
    first_expiry = time.time() + 2
    async with ws_client(f"{node.ws_url}?token={token(alice, ttl=2)}") as client:
        await client.send({"type": "refresh", "token": token(_user()), "id": 1})
        await client.send({"type": "refresh", "token": token(alice, ttl=3600), "id": 2})
        await client.wait_for(lambda c: len(c.of("error")) == 1 and c.of("refreshed"))
        assert client.of("error")[0]["error"] == "token_mismatch"
        # well past the first token's expiry, the connection still answers
        ids = await node.publish(event(alice))
        # the first token's expiry must pass (a negative check: nothing may happen then)
        await asyncio.sleep(max(0.0, first_expiry + 1 - time.time()))
        await client.send({"type": "ping"})
        await client.wait_for(lambda c: c.of("pong"))
        assert client.closed is None
        assert ids[0] in [e["id"] for e in client.events()]


async def test_algorithm_confusion_is_refused_and_rs256_accepted(rsa_node: Node) -> None:
    alice = _user()
    good = jwt.encode(_claims(alice), _RSA, algorithm="RS256")
    async with ws_client(f"{rsa_node.ws_url}?token={good}") as client:
        await client.wait_for(lambda c: c.of("connected"))
    code, reason, _ = await _refused(f"{rsa_node.ws_url}?token={_hmac_with_public_key(alice)}")
    assert (code, reason) == (CloseCode.UNAUTHORIZED, "token_algorithm_not_allowed")
    code, reason, _ = await _refused(f"{rsa_node.ws_url}?token={_unsigned(alice)}")
    assert (code, reason) == (CloseCode.UNAUTHORIZED, "token_algorithm_not_allowed")


@pytest.mark.parametrize("case", ["missing", "expired", "wrong audience", "alg none"])
async def test_sse_refuses_the_same_tokens_with_the_error_body(node: Node, case: str) -> None:
    kind, _, reason = BAD_TOKENS[case]
    bad = _bad(kind)
    params = {} if bad is None else {"token": bad}
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        response = await client.get("/sse", params=params)
    assert response.status_code == 401
    assert response.json()["error"] == reason
    assert response.headers["www-authenticate"] == "Bearer"


async def test_sse_refuses_a_forbidden_origin(node: Node) -> None:
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        response = await client.get(
            "/sse", params={"token": token(_user())}, headers={"Origin": "https://evil.example"}
        )
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden_origin"


async def test_tokens_in_the_query_never_reach_the_log(node: Node) -> None:
    secret_token = token(_user())
    async with ws_client(f"{node.ws_url}?token={secret_token}&events=test.*") as client:
        await client.wait_for(lambda c: c.of("connected"))
    async with sse_client(node.url, token=secret_token):
        pass
    log = node.server.log_text()
    assert "/ws?token=***&events=test.*" in log  # the access log shows the request...
    assert "/sse?token=***" in log
    assert secret_token not in log  # ...without the token
    assert node.key not in log


async def test_a_listed_origin_may_use_the_cookie_and_read_with_credentials(node: Node) -> None:
    alice = _user()
    cookie = {"Cookie": f"eventmill_token={token(alice)}"}
    async with ws_client(node.ws_url, origin=ALLOWED_ORIGIN, additional_headers=cookie) as client:
        await client.wait_for(lambda c: c.of("connected"))
    headers = {**cookie, "Origin": ALLOWED_ORIGIN}
    async with sse_client(node.url, headers=headers) as stream:
        assert stream.response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert stream.response.headers["access-control-allow-credentials"] == "true"


def test_a_page_let_in_by_any_origin_must_bring_its_own_token(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``allowed_origins = *``: any page may connect with a token it was given, but the
    user's cookie, which the browser sends along for any page, does not count for it
    (else any site the user visits could read their stream)."""
    tmp = tmp_path_factory.mktemp("realtime-any-origin")
    store_url = f"sqlite:///{tmp / 'events.db'}"
    key = asyncio.run(create_key(store_url))
    evil = "https://evil.example"
    with running_node(
        tmp,
        store_url,
        f"sqlite:///{tmp / 'bus.db'}",
        key,
        EVENTMILL_REALTIME__ALLOWED_ORIGINS="*",
    ) as node:
        alice = _user()
        cookie = {"Cookie": f"eventmill_token={token(alice)}"}

        async def check() -> None:
            code, reason, _ = await _refused(node.ws_url, origin=evil, additional_headers=cookie)
            assert (code, reason) == (CloseCode.UNAUTHORIZED, "token_missing")
            async with ws_client(f"{node.ws_url}?token={token(alice)}", origin=evil) as client:
                await client.wait_for(lambda c: c.of("connected"))
            async with ws_client(node.ws_url, additional_headers=cookie) as client:  # no Origin
                await client.wait_for(lambda c: c.of("connected"))
            async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
                refused = await http.get("/sse", headers={**cookie, "Origin": evil})
            assert refused.status_code == 401
            assert refused.json()["error"] == "token_missing"
            headers = {"Origin": evil}
            async with sse_client(node.url, token=token(alice), headers=headers) as stream:
                assert stream.response.headers["access-control-allow-origin"] == evil
                assert "access-control-allow-credentials" not in stream.response.headers

        asyncio.run(check())


def test_credentials_never_reach_the_log_at_debug_level(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """At ``debug``, the server's own lines print each handshake's request line and
    headers: the token in the query, the header and the cookie, and an API key, are
    masked there too."""
    tmp = tmp_path_factory.mktemp("realtime-debug-log")
    store_url = f"sqlite:///{tmp / 'events.db'}"
    key = asyncio.run(create_key(store_url))
    with running_node(
        tmp, store_url, f"sqlite:///{tmp / 'bus.db'}", key, EVENTMILL_LOG_LEVEL="debug"
    ) as node:
        secret_token = token(_user())

        async def connect_every_way() -> None:
            for url, kwargs in (
                (f"{node.ws_url}?token={secret_token}", {}),
                (node.ws_url, {"additional_headers": {"Authorization": f"Bearer {secret_token}"}}),
                (
                    node.ws_url,
                    {"additional_headers": {"Cookie": f"eventmill_token={secret_token}"}},
                ),
                (node.ws_url, {"additional_headers": {"Authorization": f"Bearer {node.key}"}}),
            ):
                async with ws_client(url, **kwargs) as client:
                    await client.wait_for(lambda c: c.of("connected"))

        asyncio.run(connect_every_way())
        log = node.server.log_text()
        assert "GET /ws" in log  # the handshakes were logged...
        assert secret_token not in log  # ...without their credentials
        assert node.key not in log
