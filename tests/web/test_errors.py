"""Request ids, and the 500 of last resort: answered with the one error body, logged once
with its traceback and the request id."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest

from eventmill.app import create_app, resources_of
from tests.ingest.support import settings_for, store_url

__all__ = ["store_url"]  # the fixture: SQLite and PostgreSQL stores

_GENERATED = re.compile(r"[0-9a-f]{24}")


def _client(app: object) -> httpx.AsyncClient:
    # raise_app_exceptions (the default): an exception escaping the app fails the test
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://eventmill.test")


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_every_answer_carries_a_request_id(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'e.db'}"))
    async with app.router.lifespan_context(app), _client(app) as client:
        generated = await client.get("/healthz")
        assert _GENERATED.fullmatch(generated.headers["x-request-id"])
        other = await client.get("/healthz")
        assert other.headers["x-request-id"] != generated.headers["x-request-id"]
        for sane in ("abc-123", "req_01J5Q8Z6R1W3KXQ3M9V7T2B4NC", "a" * 128, "trace:1/2+3="):
            r = await client.get("/nope", headers={"X-Request-Id": sane})
            assert r.status_code == 404
            assert r.headers["x-request-id"] == sane
        insane: str | bytes
        for insane in ("a" * 129, "two words", "", "é".encode()):
            r = await client.get("/healthz", headers={"X-Request-Id": insane})
            assert _GENERATED.fullmatch(r.headers["x-request-id"]), insane


async def test_an_unhandled_exception_is_500_logged_with_traceback_and_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'e.db'}"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("something nobody handles")

    async with app.router.lifespan_context(app), _client(app) as client:
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            r = await client.get("/boom", headers={"X-Request-Id": "req-boom-1"})
        assert r.status_code == 500
        assert r.json() == {
            "error": "internal_error",
            "message": "internal error (request id req-boom-1)",
        }
        assert r.headers["x-request-id"] == "req-boom-1"
        [record] = _errors(caplog)
        assert "req-boom-1" in record.getMessage()
        assert "GET /boom" in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)


async def test_a_store_error_is_500_logged_with_traceback_and_request_id(
    tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(tmp_path, store_url))
    async with app.router.lifespan_context(app), _client(app) as client:
        store = resources_of(app).store
        assert store is not None
        _, key = await store.api_keys.create("t", {"admin"})
        await store.close()  # every use now raises StoreError: a bug, not an outage
        caplog.clear()
        with caplog.at_level(logging.INFO):
            r = await client.get("/v1/events", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 500
        assert r.json()["error"] == "internal_error"
        rid = r.headers["x-request-id"]
        assert rid in r.json()["message"]
        [record] = _errors(caplog)
        assert rid in record.getMessage()
        assert record.exc_info is not None
        assert key not in caplog.text


async def test_log_lines_of_a_request_carry_its_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``eventmill serve``'s log configuration, a line logged while handling a
    request (here: the rejected webhook's warning path) names the request's id."""
    import json

    import structlog

    from eventmill.logs import configure_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("info", json=True)
    try:
        app = create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'e.db'}"))
        async with app.router.lifespan_context(app), _client(app) as client:
            capsys.readouterr()

            @app.get("/_log_something")
            async def log_something() -> dict[str, str]:
                logging.getLogger("eventmill.test").warning("inside the request")
                return {}

            r = await client.get("/_log_something", headers={"X-Request-Id": "req-logged-1"})
            assert r.status_code == 200
            logging.getLogger("eventmill.test").warning("outside any request")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
        inside = [x for x in lines if x["event"] == "inside the request"]
        outside = [x for x in lines if x["event"] == "outside any request"]
        assert inside[0]["request_id"] == "req-logged-1"
        assert "request_id" not in outside[0]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
