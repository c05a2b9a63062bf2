"""The service's errors and its one JSON error body (layer 4, shared by every feature).

Every error the service answers has the body :class:`ErrorBody`::

    {"error": "invalid_signature", "message": "X-Razorpay-Signature does not match",
     "details": null}

Routes raise :class:`ApiError` (or an :class:`~eventmill.EventmillError`, mapped by
:func:`status_for`); :func:`install_error_handlers` turns both, and FastAPI's own
request validation errors, into that body. :func:`error_responses` documents the
codes a route may answer in its OpenAPI entry. Messages never carry secrets: they
come from exceptions whose texts are written not to.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventmill.errors import (
    BackendUnavailableError,
    ClosedError,
    EventmillError,
    EventValidationError,
    PublishError,
)
from eventmill.store.errors import DuplicateEventError, InvalidCursorError, StoreUnavailableError

__all__ = [
    "ApiError",
    "AuthenticationError",
    "ErrorBody",
    "FieldError",
    "PayloadTooLargeError",
    "PublishPendingError",
    "ServiceError",
    "SignatureError",
    "UnknownSourceError",
    "error_responses",
    "install_error_handlers",
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
    409: "Conflict (Idempotency-Key reused with a different body)",
    413: "Request body larger than the configured limit",
    422: "Schema violation; `details` names the fields",
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


def install_error_handlers(app: FastAPI) -> None:
    """Answer :class:`ApiError`, eventmill errors and request validation errors as JSON."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_eventmill_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EventmillError)
        status, code = status_for(exc)
        if status >= 500:
            _log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        message = str(exc) if status < 500 or status == 503 else "internal error"
        details = None
        if isinstance(exc, EventValidationError):
            if exc.errors:
                details = [FieldError(field=e["field"], message=e["message"]) for e in exc.errors]
            elif exc.field:
                details = [FieldError(field=exc.field, message=str(exc))]
        return ApiError(status, code, message, details=details).response()

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

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(EventmillError, on_eventmill_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
