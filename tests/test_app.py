"""The composition root: health, readiness, OpenAPI, lifespan."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from eventmill import ClosedError, Message
from eventmill.app import resources_of
from tests.conftest import free_port
from tests.ingest.support import running_app, settings_for, store_url

__all__ = ["store_url"]  # the fixture: SQLite and PostgreSQL stores

EXPECTED_ERRORS = {
    ("POST", "/webhooks/razorpay"): {"400", "401", "404", "413", "415", "422", "503"},
    ("POST", "/api/webhooks/razorpay"): {"400", "401", "404", "413", "415", "422", "503"},
    ("POST", "/webhooks/{source}"): {"400", "401", "404", "413", "415", "422", "503"},
    ("POST", "/v1/events"): {"400", "401", "403", "409", "413", "415", "422", "503"},
    ("GET", "/v1/events"): {"400", "401", "403", "422", "503"},
    ("GET", "/v1/events/{event_id}"): {"401", "403", "404", "503"},
    ("GET", "/sse"): {"400", "401", "403", "429", "503"},
    ("GET", "/readyz"): {"503"},
    ("GET", "/healthz"): set(),
    ("GET", "/metrics"): set(),
    ("POST", "/v1/replay"): {"401", "403", "415", "422", "503"},
    ("GET", "/v1/traces/{event_id}"): {"401", "403", "404", "503"},
    ("GET", "/v1/rejected-webhooks"): {"401", "403", "422", "503"},
}


def _api_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every documented API route, included routers flattened."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.16x
    except ImportError:  # older FastAPI copies included routes into app.routes
        return {
            (m, r.path)
            for r in app.routes
            if isinstance(r, APIRoute) and r.include_in_schema
            for m in r.methods
        }
    return {
        (method, ctx.path)
        for ctx in iter_route_contexts(app.routes)
        if isinstance(ctx.original_route, APIRoute) and ctx.original_route.include_in_schema
        for method in ctx.methods or ()
    }


async def test_health_and_readiness(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        for path in ("/healthz", "/readyz"):  # as load balancers probe
            probe = await client.head(path)
            assert probe.status_code == 200
            assert probe.content == b""
        assert ready.json()["bus"] == {"ok": True, "url": "memory://", "error": None}
        assert ready.json()["store"]["ok"] is True
        ctx = resources_of(app)
    # the lifespan closed what it opened
    assert ctx.store is not None
    assert ctx.bus is not None
    with pytest.raises(ClosedError):
        await ctx.bus.publish("events", Message(b"after shutdown"))


async def test_readiness_names_the_unreachable_store_without_its_password(tmp_path: Path) -> None:
    dead = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/test"
    async with running_app(settings_for(tmp_path, dead)) as (_, client):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "unavailable"
        assert body["store"]["ok"] is False
        assert body["store"]["error"]
        assert "hunter2" not in ready.text
        assert (await client.get("/healthz")).status_code == 200


async def test_openapi_documents_every_route_with_its_errors(
    tmp_path: Path, store_url: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        spec = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()

        routes = _api_routes(app)
        assert set(EXPECTED_ERRORS) <= routes
        for method, path in routes:
            op = spec["paths"][path][method.lower()]
            assert op.get("description") or op.get("summary"), path
            assert any(c.startswith("2") for c in op["responses"]), (method, path)
            errors = {c for c in op["responses"] if c.startswith(("4", "5"))}
            expected = EXPECTED_ERRORS.get((method, path), set())
            if path.startswith("/v1/"):  # every API route needs credentials and the store
                expected = expected | {"401", "503"}
            assert expected <= errors, (method, path, expected - errors)
            for code in errors - {"503"} if path == "/readyz" else errors:
                if code == "422" and "content" not in op["responses"][code]:
                    continue
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith(("/ErrorBody", "/HTTPValidationError")), (path, code)
        assert "ErrorBody" in spec["components"]["schemas"]
        assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
        webhook = spec["paths"]["/webhooks/razorpay"]["post"]
        assert "requestBody" in webhook
        header_names = {p["name"].lower() for p in webhook["parameters"]}
        assert "x-razorpay-signature" in header_names


async def test_metrics_parse_and_move(tmp_path: Path, store_url: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from eventmill.events import Event

    def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    key = ("eventmill_handler_messages_total", (("handler", "audit"), ("outcome", "success")))
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        before = await client.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        assert "process_cpu_seconds_total" in before.text
        assert samples(before.text).get(key, 0.0) == 0.0
        res = resources_of(app)
        assert res.bus is not None
        assert res.store is not None
        event = Event(event_name="user.created", user_id="u-metrics")
        await res.bus.publish("events", event.to_message())  # not via ingest: audited
        async with asyncio.timeout(10):
            while await res.store.events.get(event.id) is None:
                await asyncio.sleep(0.01)
            while samples((await client.get("/metrics")).text).get(key, 0.0) < 1:
                await asyncio.sleep(0.01)


def test_startup_message_names_the_docs_sources_and_first_steps(tmp_path: Path) -> None:
    from eventmill.app import startup_message

    off = settings_for(
        tmp_path, "sqlite:///rel/events.db", razorpay_webhook_secret="", host="0.0.0.0"
    )
    text = startup_message(off, ".venv/bin/eventmill")
    assert "API docs   http://127.0.0.1:8080/docs" in text
    assert "POST /webhooks/acme, POST /webhooks/github" in text
    assert "Razorpay is off: set RAZORPAY_WEBHOOK_SECRET=" in text
    assert ".venv/bin/eventmill keys create <name> --scope publish --scope read" in text
    assert f"store      sqlite:///{Path.cwd() / 'rel' / 'events.db'}" in text

    on = settings_for(tmp_path, "postgresql://u:hunter2@db/x", sources={}, port=9000)
    text = startup_message(on)
    assert "webhooks   POST /webhooks/razorpay" in text
    assert "Razorpay is off" not in text
    assert "hunter2" not in text
    assert "eventmill keys create" in text


async def test_docs_load_from_installed_assets_with_no_external_url(tmp_path: Path) -> None:
    """/docs works offline: every script, style and icon it loads is served by the app."""
    import re

    async with running_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'e.db'}")) as (
        _,
        client,
    ):
        page = await client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(urls) == 3, urls  # the script, the style sheet, the icon
        for url in urls:
            assert url.startswith("/docs/assets/"), url
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert asset.content, url
        assert "http://" not in page.text
        assert "https://" not in page.text
        bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in bundle.headers["content-type"]
        assert b"SwaggerUIBundle" in bundle.content
        css = await client.get("/docs/assets/swagger-ui.css")
        assert css.headers["content-type"].startswith("text/css")
        assert "url: '/openapi.json'" in page.text
        assert (await client.get("/openapi.json")).status_code == 200
        assert (await client.get("/redoc")).status_code == 404  # it would need a CDN


@pytest.mark.parametrize(
    ("roles", "present", "absent"),
    [
        (["ingest"], {"/webhooks/razorpay", "/v1/events"}, {"/v1/endpoints", "/v1/replay"}),
        (["api"], {"/v1/endpoints", "/v1/replay", "/v1/traces/{event_id}"}, {"/v1/events"}),
        (["delivery"], set(), {"/v1/events", "/v1/endpoints"}),
    ],
)
async def test_a_role_serves_its_routes_and_runs_its_workers(
    tmp_path: Path, roles: list[str], present: set[str], absent: set[str]
) -> None:
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", roles=roles)
    async with running_app(settings) as (app, client):
        paths = {path for _, path in _api_routes(app)}
        assert present <= paths
        assert not (absent & paths)
        assert {"/healthz", "/readyz", "/metrics"} <= paths
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        started = {f.name for f in app.state.runtime.features}
        expected = {"ingest": {"ingest"}, "api": {"operations"}, "delivery": {"delivery"}}
        assert started == expected[roles[0]]


def test_roles_come_from_a_comma_separated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from eventmill.errors import ConfigurationError
    from eventmill.settings import Settings

    monkeypatch.setenv("EVENTMILL_ROLES", "api, delivery")
    assert Settings.load().roles == ["api", "delivery"]
    monkeypatch.setenv("EVENTMILL_ROLES", "api,everything")
    with pytest.raises(ConfigurationError, match="roles"):
        Settings.load()
