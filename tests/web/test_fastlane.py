"""The fast lane: fixed-path direct routes are answered without the router, exactly as the
router would answer them (errors through the app's handlers, request ids, 405 for other
methods), and never when a route before them in the router's order would match."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from fastapi import APIRouter, Depends, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from websockets.exceptions import ConnectionClosed

from eventmill.web.errors import ApiError, install_error_handlers
from eventmill.web.fastlane import WEBSOCKET, DirectRoute, FastLane, lane_routes
from tests.asgi_server import serving


def _via_router(request: Request) -> bool:
    # FastAPI's per-request wrapper (which the lane skips) leaves its exit stack here.
    return "fastapi_inner_astack" in request.scope


async def direct(request: Request) -> Response:
    body = await request.body()
    if body == b"api-error":
        raise ApiError(409, "conflict_here", "a conflict, on purpose")
    if body == b"boom":
        raise RuntimeError("nobody handles this")
    return JSONResponse({"body": body.decode(), "router": _via_router(request)})


async def routed_error(request: Request) -> Response:
    raise ApiError(409, "conflict_here", "a conflict, on purpose")


async def shadow(request: Request, name: str) -> Response:
    return JSONResponse({"shadow": name, "router": _via_router(request)})


async def fixed(request: Request) -> Response:
    return JSONResponse({"fixed": True, "router": _via_router(request)})


async def needs(request: Request, value: str = Depends(lambda: "from a dependency")) -> Response:
    return JSONResponse({"value": value, "router": _via_router(request)})


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    if text == "api-error":
        raise ApiError(409, "conflict_here", "a conflict, on purpose")
    await websocket.send_json({"echo": text, "params": websocket.path_params})
    await websocket.close()


def build() -> FastAPI:
    """An app wired as :func:`eventmill.app.create_app` wires the service's."""
    app = FastAPI()
    laned: dict[tuple[str, str], BaseRoute] = {}
    app.add_middleware(FastLane, routes=laned)
    install_error_handlers(app)
    router = APIRouter()
    router.add_api_route("/direct", direct, methods=["POST"], route_class_override=DirectRoute)
    router.add_api_route("/routed-error", routed_error, methods=["POST"])
    router.add_api_route("/shadow/{name}", shadow, methods=["POST"])
    router.add_api_route("/shadow/fixed", fixed, methods=["POST"], route_class_override=DirectRoute)
    router.add_api_route("/needs", needs, methods=["POST"], route_class_override=DirectRoute)
    router.routes.append(WebSocketRoute("/socket", socket))
    router.routes.append(WebSocketRoute("/socket-routed/{any}", socket))  # never laned
    routes = list(app.routes)
    app.include_router(router)
    routes.extend(router.routes)
    laned.update(lane_routes(routes))
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build())
    async with httpx.AsyncClient(transport=transport, base_url="http://lane.test") as c:
        yield c


def test_only_fixed_direct_routes_no_earlier_route_matches_are_laned() -> None:
    app = build()
    [lane] = [m.kwargs["routes"] for m in app.user_middleware if m.cls is FastLane]
    # not /shadow/fixed (a route before it matches), not /needs (a dependency)
    assert set(lane) == {("POST", "/direct"), (WEBSOCKET, "/socket")}


async def test_a_laned_route_answers_without_the_router(client: httpx.AsyncClient) -> None:
    r = await client.post("/direct", content=b"hello")
    assert r.status_code == 200
    assert r.json() == {"body": "hello", "router": False}
    assert r.headers["x-request-id"]


async def test_routes_the_lane_does_not_take_go_through_the_router(
    client: httpx.AsyncClient,
) -> None:
    shadowed = await client.post("/shadow/fixed")
    assert shadowed.json() == {"shadow": "fixed", "router": True}  # the first match wins
    assert (await client.post("/needs")).json() == {"value": "from a dependency", "router": True}
    wrong_method = await client.get("/direct")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"
    trailing = await client.post("/direct/")
    assert trailing.status_code in (307, 404)  # the router's answer, whatever it is


async def test_errors_are_answered_as_the_router_answers_them(client: httpx.AsyncClient) -> None:
    laned = await client.post("/direct", content=b"api-error", headers={"X-Request-Id": "r-1"})
    routed = await client.post("/routed-error", headers={"X-Request-Id": "r-1"})
    assert laned.status_code == routed.status_code == 409
    assert laned.json() == routed.json()
    assert laned.headers["x-request-id"] == "r-1"


async def test_an_unhandled_exception_is_the_500_of_last_resort(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/direct", content=b"boom", headers={"X-Request-Id": "r-boom"})
    assert r.status_code == 500
    assert r.json()["error"] == "internal_error"
    assert "r-boom" in r.json()["message"]
    assert "nobody handles this" not in r.text


async def _failure(url: str) -> str:
    """How a socket whose endpoint raises a handled error ends, as the client sees it."""
    async with websockets.connect(url) as ws:
        await ws.send("api-error")
        try:
            await ws.recv()
        except ConnectionClosed as exc:  # the server ended the socket
            return f"closed {exc.rcvd.code if exc.rcvd else None}"
    return "no error"


async def test_a_laned_websocket_route_is_served_and_fails_as_a_routed_one() -> None:
    async with serving(build()) as port:
        base = f"ws://127.0.0.1:{port}"
        async with websockets.connect(f"{base}/socket") as ws:
            await ws.send("hello")
            assert json.loads(await ws.recv()) == {"echo": "hello", "params": {}}
        async with websockets.connect(f"{base}/socket-routed/x") as ws:
            await ws.send("hello")
            assert json.loads(await ws.recv()) == {"echo": "hello", "params": {"any": "x"}}
        laned = await _failure(f"{base}/socket")
        assert laned != "no error"
        assert laned == await _failure(f"{base}/socket-routed/x")


async def test_a_laned_websocket_endpoint_writes_through_the_servers_own_send() -> None:
    """Its frames go straight to the server's ``send`` (no wrapper call per frame)."""
    given: list[object] = []

    class Endpoint:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            given.append(send)

    async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the lane serves /raw")

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    lane = FastLane(fallback, {(WEBSOCKET, "/raw"): WebSocketRoute("/raw", Endpoint())})
    scope: Scope = {"type": "websocket", "path": "/raw", "headers": [], "query_string": b""}
    await lane(scope, receive, send)
    assert given == [send]
