"""The service's errors and its one JSON error body (layer 4, shared by every feature).

Every error the service answers has the body :class:`ErrorBody`::

    {"error": "invalid_signature", "message": "X-Razorpay-Signature does not match",
     "details": null}

Routes raise :class:`ApiError` (or an :class:`~eventmill.EventmillError`, mapped by
:func:`status_for`); :func:`install_error_handlers` turns both, and FastAPI's own
request validation errors, into that body. :func:`error_responses` documents the
codes a route may answer in its OpenAPI entry. Messages never carry secrets: they
come from exceptions whose texts are written not to.

Every request has an id (:func:`request_id`): the client's ``X-Request-Id`` when it is
1-128 characters of ``A-Z a-z 0-9 . _ : / + = -``, else a new one; it is echoed in the
response's ``X-Request-Id`` header and named in every log line about the request. An
exception no handler answers is answered 500 ``internal_error`` (the body names the
request id) and logged once, at ERROR, with its traceback and the request id. A client
that disconnects before its body is complete gets one DEBUG line, no traceback.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Final

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventmill.errors import (
    BackendUnavailableError,
    ClosedError,
    EventmillError,
    EventValidationError,
    PublishError,
)
from eventmill.store.errors import DuplicateEventError, InvalidCursorError, StoreUnavailableError

__all__ = [
    "REQUEST_ID_HEADER",
    "ApiError",
    "AuthenticationError",
    "ErrorBody",
    "FieldError",
    "PayloadTooLargeError",
    "PublishPendingError",
    "RequestContextMiddleware",
    "ServiceError",
    "SignatureError",
    "UnknownSourceError",
    "api_error_for",
    "error_responses",
    "install_error_handlers",
    "request_id",
    "status_for",
]

_log = logging.getLogger("eventmill.web")


class ServiceError(EventmillError):
    """Base of the service's own errors (HTTP requests), below the one root."""


class AuthenticationError(ServiceError):
    """A request carried no credentials, or wrong ones (API key, JWT)."""


class SignatureError(AuthenticationError):
    """A webhook's signature is missing, malformed, stale or does not match."""


class UnknownSourceError(ServiceError):
    """A webhook arrived for a source that is not configured."""


class PayloadTooLargeError(ServiceError):
    """A request body is larger than the configured limit."""


class PublishPendingError(BackendUnavailableError):
    """Events are stored but the bus did not accept them; the outbox relay will publish them."""


class FieldError(BaseModel):
    """One invalid field of a request."""

    field: str
    """Dotted path of the field (``payload.amount``, ``query.limit``)."""
    message: str
    """What is wrong with it."""


class ErrorBody(BaseModel):
    """The JSON body of every error response."""

    error: str
    """A stable machine-readable code (``invalid_signature``, ``payload_too_large``, …)."""
    message: str
    """A human-readable explanation; never contains secrets."""
    details: list[FieldError] | None = None
    """For 422: the fields that failed validation."""


class ApiError(Exception):
    """An error answered as ``status`` with an :class:`ErrorBody`."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        details: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details
        self.headers = headers

    def response(self) -> JSONResponse:
        body = ErrorBody(error=self.error, message=self.message, details=self.details)
        return JSONResponse(
            body.model_dump(exclude_none=True), status_code=self.status, headers=self.headers
        )


_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request (body is not valid JSON, bad cursor)",
    401: "Missing or wrong credentials (signature, API key)",
    403: "The API key lacks the required scope",
    404: "Not found (unknown source or event)",
    409: "Conflict: `idempotency_conflict` (Idempotency-Key used with another body), "
    "`idempotency_in_progress` (its first request still runs), `duplicate_event` (event id "
    "taken), `delivery_in_flight` (a delivery retried while an attempt sends it), "
    "`endpoint_disabled` (retry or recover on a disabled endpoint), `rotation_in_progress` "
    "(a rotation while the previous one's old secret still signs)",
    413: "Request body larger than the configured limit",
    415: "The request body has a Content-Encoding (`unsupported_content_encoding`): send it "
    "uncompressed",
    422: "Schema violation (`details` names the fields), JSON nested more than 64 "
    "levels deep (`json_too_deep`), or an integer beyond 64 bits (`number_out_of_range`)",
    503: "Event store or bus unavailable; retry later (nothing was acknowledged)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for ``codes``, each with the :class:`ErrorBody` model."""
    return {
        code: {"model": ErrorBody, "description": _DESCRIPTIONS.get(code, "Error")}
        for code in codes
    }


_MAPPING: tuple[tuple[type[EventmillError], int, str], ...] = (
    (InvalidCursorError, 400, "invalid_cursor"),
    (DuplicateEventError, 409, "duplicate_event"),
    (AuthenticationError, 401, "unauthorized"),
    (UnknownSourceError, 404, "unknown_source"),
    (PayloadTooLargeError, 413, "payload_too_large"),
    (EventValidationError, 422, "validation_failed"),
    (StoreUnavailableError, 503, "store_unavailable"),
    (BackendUnavailableError, 503, "bus_unavailable"),
    (PublishError, 503, "bus_unavailable"),
    (ClosedError, 503, "unavailable"),
)


def status_for(exc: EventmillError) -> tuple[int, str]:
    """The HTTP status and error code answered for an eventmill error (500 if unmapped)."""
    for cls, status, code in _MAPPING:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


def _validation_details(exc: RequestValidationError) -> list[FieldError]:
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        details.append(FieldError(field=".".join(loc) or "request", message=str(err.get("msg"))))
    return details


def api_error_for(exc: EventmillError) -> ApiError:
    """The :class:`ApiError` answered for an eventmill error: its status and code from
    :func:`status_for`; for 422, ``details`` names the failing fields; a 500's message
    says only "internal error" (the log has the rest)."""
    status, code = status_for(exc)
    message = str(exc) if status < 500 or status == 503 else "internal error"
    details = None
    if isinstance(exc, EventValidationError):
        if exc.errors:
            details = [FieldError(field=e["field"], message=e["message"]) for e in exc.errors]
        elif exc.field:
            details = [FieldError(field=exc.field, message=str(exc))]
    return ApiError(status, code, message, details=details)


# -- request ids and the last line of defence ------------------------------------------

REQUEST_ID_HEADER: Final = "X-Request-Id"
"""Request header a client may name its request by; response header echoing the id."""
_REQUEST_ID_KEY: Final = "eventmill.request_id"
_HEADER_KEY: Final = b"x-request-id"
_SANE_ID: Final = re.compile(rb"[A-Za-z0-9._:/+=\-]{1,128}")


def request_id(conn: HTTPConnection) -> str:
    """The id of the request (``-`` for one that did not pass the middleware)."""
    rid = conn.scope.get(_REQUEST_ID_KEY)
    return rid.decode("latin-1") if isinstance(rid, bytes) else "-"


def _describe(scope: Scope) -> str:
    return f"{scope.get('method', 'WS')} {scope.get('path', '?')}"


class RequestContextMiddleware:
    """Gives each HTTP request an id and answers what nothing else did.

    The id is the client's ``X-Request-Id`` when it is sane, else 24 random hex digits;
    the response carries it in ``X-Request-Id``. An exception that escapes the app
    (no handler for it) is logged once with its traceback and the request id, and
    answered 500 ``internal_error`` if no response has started; it does not propagate
    to the server (which would log it a second time, without the id). A
    :class:`~starlette.requests.ClientDisconnect` is one DEBUG line.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid: bytes | None = None
        for name, value in scope["headers"]:
            if name == _HEADER_KEY:
                if _SANE_ID.fullmatch(value) is not None:
                    rid = value
                break
        if rid is None:
            rid = os.urandom(12).hex().encode()
        scope[_REQUEST_ID_KEY] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                headers.append((_HEADER_KEY, rid))
                message = {**message, "headers": headers}
            await send(message)

        # Every log line of this request carries its id (structlog's context variables,
        # which ``eventmill serve``'s log configuration merges into each line).
        bound = structlog.contextvars.bind_contextvars(request_id=rid.decode("latin-1"))
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            _log.debug(
                "%s: the client disconnected mid-request (request id %s)",
                _describe(scope),
                rid.decode("latin-1"),
            )
        except Exception as exc:
            text = rid.decode("latin-1")
            _log.error(
                "%s -> 500 internal_error (request id %s): %s: %s",
                _describe(scope),
                text,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            if not started:
                response = ApiError(
                    500, "internal_error", f"internal error (request id {text})"
                ).response()
                await response(scope, receive, send_with_id)
        finally:
            structlog.contextvars.reset_contextvars(**bound)


def install_error_handlers(app: FastAPI) -> None:
    """Answer :class:`ApiError`, eventmill errors and request validation errors as JSON,
    and install :class:`RequestContextMiddleware` (request ids, the 500 of last resort).
    Middleware added before this call runs inside that one."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_eventmill_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EventmillError)
        error = api_error_for(exc)
        where = f"{request.method} {request.url.path}"
        if error.status == 500:
            _log.error(
                "%s -> 500 internal_error (request id %s): %s: %s",
                where,
                request_id(request),
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            error.message = f"internal error (request id {request_id(request)})"
        elif error.status >= 500:
            _log.warning(
                "%s -> %d %s (request id %s): %s",
                where,
                error.status,
                error.error,
                request_id(request),
                exc,
            )
        return error.response()

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = _validation_details(exc)
        fields = ", ".join(d.field for d in details)
        return ApiError(422, "validation_failed", f"invalid {fields}", details=details).response()

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ApiError(
            exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})
        ).response()

    async def on_disconnect(request: Request, exc: Exception) -> JSONResponse:
        # Nobody is left to read an answer: the server drops it. One line, no traceback.
        _log.debug(
            "%s %s: the client disconnected before its body was complete (request id %s)",
            request.method,
            request.url.path,
            request_id(request),
        )
        return ApiError(400, "client_disconnected", "the request body was not complete").response()

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(EventmillError, on_eventmill_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_middleware(RequestContextMiddleware)
