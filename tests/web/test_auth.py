"""The shared auth dependencies: API keys with scopes, end users' JWTs, and where a
token may come from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import jwt
import pytest
from fastapi import Depends, FastAPI

from eventmill.events import EventRegistry
from eventmill.store import ApiKeyRecord, open_store
from eventmill.web.auth import AdminKey, require_principal
from eventmill.web.errors import install_error_handlers
from eventmill.web.seam import Resources
from eventmill.web.tokens import JwtSettings, JwtVerifier, Principal

SECRET = "auth-test-secret-auth-test-secret-0123"
Caller = Annotated[Principal, Depends(require_principal("admin"))]
BrowserCaller = Annotated[Principal, Depends(require_principal("admin", query=True, cookie=True))]


def _jwt(sub: str = "u1", **claims: Any) -> str:
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Resources]]:
    store = await open_store(f"sqlite:///{tmp_path / 'auth.db'}")
    resources = Resources(
        registry=EventRegistry.default(), jwt=JwtVerifier(JwtSettings(secret=SECRET))
    )
    resources.store = store
    app = FastAPI()
    app.state.resources = resources
    install_error_handlers(app)

    @app.get("/who")
    async def who(caller: Caller) -> dict[str, Any]:
        return {"user": caller.user_id, "admin": caller.is_admin}

    @app.get("/browser")
    async def browser(caller: BrowserCaller) -> dict[str, Any]:
        return {"user": caller.user_id}

    @app.get("/admin")
    async def admin(key: AdminKey) -> dict[str, Any]:
        record: ApiKeyRecord = key
        return {"key": record.id}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c, resources
    await store.close()


async def _key(resources: Resources, *scopes: str) -> str:
    _, plaintext = await resources.require_keys().create("k", set(scopes))
    return plaintext


async def test_an_admin_key_and_a_user_token_are_both_principals(
    client: tuple[httpx.AsyncClient, Resources],
) -> None:
    c, res = client
    admin = await _key(res, "admin")
    r = await c.get("/who", headers={"Authorization": f"Bearer {admin}"})
    assert r.json() == {"user": None, "admin": True}
    r = await c.get("/who", headers={"X-API-Key": admin})
    assert r.json() == {"user": None, "admin": True}
    r = await c.get("/who", headers={"Authorization": f"Bearer {_jwt('alice')}"})
    assert r.json() == {"user": "alice", "admin": False}


async def test_a_key_without_the_scope_is_forbidden_and_a_bad_one_unauthorized(
    client: tuple[httpx.AsyncClient, Resources],
) -> None:
    c, res = client
    reader = await _key(res, "read")
    r = await c.get("/who", headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"
    r = await c.get("/who", headers={"Authorization": "Bearer em_000000000000_" + "x" * 43})
    assert r.status_code == 401
    r = await c.get("/admin", headers={"Authorization": f"Bearer {_jwt()}"})
    assert r.status_code == 401  # an end user is never an API key


async def test_token_problems_are_named_and_never_echoed(
    client: tuple[httpx.AsyncClient, Resources],
) -> None:
    c, _ = client
    expired = _jwt(exp=1)
    r = await c.get("/who", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401
    assert r.json()["error"] == "token_expired"
    assert r.headers["www-authenticate"] == "Bearer"
    assert expired not in r.text
    r = await c.get("/who")
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"


async def test_query_and_cookie_tokens_only_where_the_route_allows_them(
    client: tuple[httpx.AsyncClient, Resources],
) -> None:
    c, _ = client
    token = _jwt("bob")
    assert (await c.get("/who", params={"token": token})).status_code == 401
    assert (await c.get("/browser", params={"token": token})).json() == {"user": "bob"}
    c.cookies.set("eventmill_token", token)
    assert (await c.get("/browser")).json() == {"user": "bob"}
    c.cookies.clear()
    assert (await c.get("/browser")).status_code == 401
