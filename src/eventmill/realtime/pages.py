"""The browser side served by the service: the dashboard at ``/`` and the JS client at
``/client.js`` (plain files in ``eventmill/realtime/static``, no build step)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["routes", "static_file"]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@cache
def static_file(name: str) -> bytes:
    """The bytes of a file shipped in ``eventmill/realtime/static``."""
    return resources.files("eventmill.realtime").joinpath("static", name).read_bytes()


def _file(name: str) -> Response:
    suffix = name[name.rfind(".") :]
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if suffix == ".html":
        headers["Content-Security-Policy"] = _CSP
    return Response(static_file(name), media_type=_TYPES[suffix], headers=headers)


def routes() -> list[Route]:
    """``/`` (the dashboard), ``/client.js`` and the dashboard's own files (plain
    routes: pages, not API operations)."""

    def serve(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return _file(name)

        return endpoint

    return [
        Route("/", serve("index.html"), methods=["GET"]),
        Route("/client.js", serve("client.js"), methods=["GET"]),
        Route("/static/dashboard.js", serve("dashboard.js"), methods=["GET"]),
        Route("/static/dashboard.css", serve("dashboard.css"), methods=["GET"]),
    ]
