"""The fast lane: the service's hot routes dispatched without Starlette's routing.

A route declared with ``route_class_override=DirectRoute`` is a fixed path (no path
parameters) whose endpoint takes only the ``Request`` and returns a ``Response``, with
no dependencies: the webhook receivers. It stays an ordinary FastAPI route (OpenAPI,
``/docs``, served by the router for any request the lane does not take), and
:class:`FastLane`, a middleware just inside
:class:`~eventmill.web.errors.RequestContextMiddleware`, answers a request for it
directly (the app lists the routes with :func:`lane_routes` once every route is in):
it builds the ``Request``, awaits the endpoint and sends its response, under
Starlette's own exception wrapper with the app's exception handlers (by status code
for an ``HTTPException``, else by the exception's class and its bases; 500 and
``Exception`` are left to the outer layers, as Starlette's ``ExceptionMiddleware``
leaves them). An exception without a handler goes up unchanged, to the request-id
middleware's 500 of last resort. Fixed-path WebSocket routes (``/ws``) take the
lane too, under the same wrapper, and write through the server's own ``send``.

What it skips is the part of every request that does nothing for these routes: the
exception and exit-stack middlewares, matching the path against the app's routes in
turn, and FastAPI's per-request wrappers (exit stacks for dependencies the route does
not have). On the ingest benchmark that is about 60 µs of ~450 µs per webhook
(2 cores, Intel Xeon, 2026-12-06); a WebSocket connection, which keeps its whole
chain of ASGI calls suspended while it is open, holds those layers' frames no more.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final

from fastapi.routing import APIRoute
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

__all__ = ["WEBSOCKET", "DirectRoute", "FastLane", "lane_routes"]

WEBSOCKET: Final = "WEBSOCKET"
"""The method :func:`lane_routes` files WebSocket routes under."""

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    """An :class:`APIRoute` whose endpoint takes only the ``Request`` and returns a
    ``Response``: the endpoint is awaited directly, skipping FastAPI's per-request
    dependency solving (there is nothing to solve) and response handling; on a fixed
    path, :class:`FastLane` serves it without the router. It is still documented in
    OpenAPI and answered by the app's exception handlers like any other route; an
    endpoint with parameters or dependencies gets the standard handler (and no lane).
    """

    @property
    def direct(self) -> bool:
        """Whether the endpoint is awaited as it is: it takes only the ``Request``,
        there is nothing to solve, and it is a coroutine function."""
        d = self.dependant
        params = (d.path_params, d.query_params, d.header_params, d.cookie_params)
        return not (
            d.dependencies
            or d.body_params
            or any(params)
            or d.request_param_name is None
            or not inspect.iscoroutinefunction(self.endpoint)
        )

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        if not self.direct:
            return super().get_route_handler()
        endpoint: Endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            return await endpoint(request)

        return handler


def lane_routes(routes: Iterable[BaseRoute]) -> dict[tuple[str, str], BaseRoute]:
    """``(method, path)`` → route for the fixed-path :class:`DirectRoute` routes and
    WebSocket routes (method :data:`WEBSOCKET`) among ``routes``, given in the order the
    router tries them. The router answers with the first route that matches a request's
    path and method, so a route is laned only if no route before it matches its path
    with its method (a route of a kind without a path pattern, such as an included
    router, is taken to match anything)."""
    laned: dict[tuple[str, str], BaseRoute] = {}
    before: list[BaseRoute] = []
    for route in routes:
        keys: list[tuple[str, str]] = []
        if isinstance(route, DirectRoute) and route.direct and not route.param_convertors:
            keys = [(method, route.path) for method in sorted(route.methods or ())]
        elif isinstance(route, WebSocketRoute) and not route.param_convertors:
            keys = [(WEBSOCKET, route.path)]
        for method, path in keys:
            if not any(_matches(r, method, path) for r in before):
                laned.setdefault((method, path), route)
        before.append(route)
    return laned


def _matches(route: BaseRoute, method: str, path: str) -> bool:
    regex = getattr(route, "path_regex", None)
    if regex is None:
        return True
    if regex.match(path) is None:
        return False
    if isinstance(route, WebSocketRoute):
        return method == WEBSOCKET
    methods = getattr(route, "methods", None)  # an HTTP route answers no WebSocket
    return methods is None or method in methods


class FastLane:
    """ASGI middleware serving ``routes`` (from :func:`lane_routes`; the mapping may be
    filled after the middleware is added, until the app's first request) without the
    router; every other request goes on to the app. See the module docstring. The
    app's exception handlers are read at the first request."""

    def __init__(self, app: ASGIApp, routes: Mapping[tuple[str, str], BaseRoute]) -> None:
        self.app = app
        self._routes = routes
        self._handlers: tuple[dict[Any, Any], dict[int, Any]] | None = None

    def _exception_handlers(self, app: Any) -> tuple[dict[Any, Any], dict[int, Any]]:
        """The app's handlers as Starlette's ExceptionMiddleware holds them: by class, and
        by status code (500 and ``Exception`` belong to the outer layers)."""
        if self._handlers is None:
            handlers = getattr(app, "exception_handlers", {})
            by_class = {k: h for k, h in handlers.items() if not isinstance(k, int)}
            by_class.pop(Exception, None)
            by_status = {k: h for k, h in handlers.items() if isinstance(k, int) and k != 500}
            self._handlers = (by_class, by_status)
        return self._handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        route = None
        if not scope.get("root_path"):  # mounted under a prefix: the router knows
            if kind == "http":
                route = self._routes.get((scope["method"], scope["path"]))
            elif kind == "websocket":
                route = self._routes.get((WEBSOCKET, scope["path"]))
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        scope["endpoint"] = getattr(route, "endpoint", None)
        scope.setdefault("path_params", {})
        # What Starlette's ExceptionMiddleware would have put there for the route.
        scope["starlette.exception_handlers"] = self._exception_handlers(scope.get("app"))
        if kind == "websocket":
            assert isinstance(route, WebSocketRoute)
            connection = WebSocket(scope, receive, send)
            websocket_app = route.app

            async def serve(scope: Scope, receive: Receive, _: Send) -> None:
                # The server's own send: the wrapper's watches for an HTTP response's
                # start only, and would add a call to every frame the socket carries.
                await websocket_app(scope, receive, send)

            await wrap_app_handling_exceptions(serve, connection)(scope, receive, send)
            return
        assert isinstance(route, DirectRoute)
        endpoint: Endpoint = route.endpoint
        request = Request(scope, receive, send)

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            response = await endpoint(request)
            await response(scope, receive, send)

        await wrap_app_handling_exceptions(answer, request)(scope, receive, send)
