"""The fast lane: the service's hot routes dispatched without Starlette's routing.

A route declared with ``route_class_override=DirectRoute`` is a fixed path (no path
parameters) whose endpoint takes only the ``Request`` and returns a ``Response``, with
no dependencies: the webhook receivers. It stays an ordinary FastAPI route (OpenAPI,
``/docs``, served by the router for any request the lane does not take), and
:class:`FastLane`, a middleware just inside
:class:`~eventmill.web.errors.RequestContextMiddleware`, answers a request for it
directly (the app lists the routes with :func:`lane_routes` once every route is in):
it builds the ``Request``, awaits the endpoint, answers an exception with the app's
exception handler for it (as Starlette's ``ExceptionMiddleware`` does: by status code
for an ``HTTPException``, else by the exception's class and its bases), and sends the
response. An exception without a handler goes up unchanged, to the request-id
middleware's 500 of last resort.

What it skips is the part of every request that does nothing for these routes: the
exception and exit-stack middlewares, matching the path against the app's routes in
turn, and FastAPI's per-request wrappers (exit stacks for dependencies the route does
not have). On the ingest benchmark that is about 60 µs of ~450 µs per webhook
(2 cores, Intel Xeon, 2026-12-06).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["DirectRoute", "FastLane", "lane_routes"]

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response] | Response]


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


def lane_routes(routes: Iterable[BaseRoute]) -> dict[tuple[str, str], DirectRoute]:
    """``(method, path)`` → route for the fixed-path :class:`DirectRoute` routes among
    ``routes``, given in the order the router tries them. The router answers with the
    first route that matches a request's path and method, so a direct route is laned
    only if no route before it matches its path with its method (a route of a kind
    without a path pattern, such as an included router, is taken to match anything)."""
    laned: dict[tuple[str, str], DirectRoute] = {}
    before: list[BaseRoute] = []
    for route in routes:
        if isinstance(route, DirectRoute) and route.direct and not route.param_convertors:
            for method in sorted(route.methods or ()):
                if not any(_matches(r, method, route.path) for r in before):
                    laned.setdefault((method, route.path), route)
        before.append(route)
    return laned


def _matches(route: BaseRoute, method: str, path: str) -> bool:
    regex = getattr(route, "path_regex", None)
    if regex is None:
        return True
    if regex.match(path) is None:
        return False
    methods = getattr(route, "methods", None)
    return methods is None or method in methods


class FastLane:
    """ASGI middleware serving ``routes`` (from :func:`lane_routes`; the mapping may be
    filled after the middleware is added, until the app's first request) without the
    router; every other request goes on to the app. See the module docstring. The
    app's exception handlers are read at the first request."""

    def __init__(self, app: ASGIApp, routes: Mapping[tuple[str, str], DirectRoute]) -> None:
        self.app = app
        self._routes = routes
        self._handlers: dict[Any, ExceptionHandler] | None = None

    def _handler_for(self, app: Any, exc: Exception) -> ExceptionHandler | None:
        handlers = self._handlers
        if handlers is None:
            # As Starlette's ExceptionMiddleware: 500 and Exception are the outer layers'.
            handlers = self._handlers = {
                key: handler
                for key, handler in getattr(app, "exception_handlers", {}).items()
                if key not in (500, Exception)
            }
        if isinstance(exc, HTTPException) and exc.status_code in handlers:
            return handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await self.app(scope, receive, send)  # mounted under a prefix: the router knows
            return
        route = self._routes.get((scope["method"], scope["path"]))
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope.setdefault("path_params", {})
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            handler = self._handler_for(scope.get("app"), exc)
            if handler is None:
                raise
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:  # as Starlette runs a plain function handler
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)
