"""Webhook receivers: ``POST /webhooks/razorpay`` and ``POST /webhooks/{source}``.

Per request: unknown source → 404 (naming the setting that turns it on); body over
the limit → 413 (before reading it all); signature missing or wrong → 401; body not
JSON → 400, nested too deep → 422; a delivery id over :data:`MAX_DELIVERY_ID`
characters → 422 naming its header (or body field); transformer or registry rejects
it → 422 naming the field; then the durable path
(:func:`~eventmill.ingest.pipeline.ingest`): stored (503 if the store is down),
published (503 if the bus is down — the event stays stored for the relay) → 200.
A repeat of a delivery (same dedup key) answers 200 with ``duplicate: true`` and is
not published again.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel

from eventmill.errors import EventmillError
from eventmill.events import WebhookInput
from eventmill.ingest.config import valid_source_name
from eventmill.ingest.context import IngestContext, Receiver
from eventmill.ingest.metrics import UNCONFIGURED_SOURCE
from eventmill.ingest.pipeline import ingest
from eventmill.ingest.signatures import Verified, body_digest
from eventmill.web.body import parse_json, read_limited
from eventmill.web.errors import ApiError, FieldError, api_error_for, error_responses
from eventmill.web.fastlane import DirectRoute
from eventmill.web.tracing import TRACEPARENT_KEY, TraceContext

__all__ = ["MAX_DELIVERY_ID", "WebhookAccepted", "routes"]

_JSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The provider's JSON body, verified byte for byte against the signature.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 503)


class WebhookAccepted(BaseModel):
    """The webhook is stored (and published, unless it is a duplicate)."""

    id: str
    """The event's id (for a duplicate: the id of the event stored first)."""
    duplicate: bool
    """Whether this delivery was received before (it was not published again)."""


MAX_DELIVERY_ID: Final = 256
"""Longest provider delivery/event id accepted as a dedup key (the store's limit)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _dedup_key(verified: Verified, body: Any, raw: bytes) -> str:
    """The dedup key: the provider's delivery id (header or body field), else the body's
    digest. 422 naming the header or field when the id cannot be one (too long, or
    holding control characters)."""
    where = None
    key = verified.delivery_id
    if key:
        where = f"header.{verified.delivery_header or 'delivery id'}"
    elif verified.payload_id_field and isinstance(body, dict):
        value = body.get(verified.payload_id_field)
        if isinstance(value, str) and value:
            key, where = value, verified.payload_id_field
    if key is None or where is None:
        return body_digest(raw)
    problem = None
    if len(key) > MAX_DELIVERY_ID:
        problem = f"must be at most {MAX_DELIVERY_ID} characters (the limit)"
    elif _CONTROL.search(key) is not None:
        problem = "must not contain control characters"
    if problem is not None:
        name = where.removeprefix("header.")
        raise ApiError(
            422,
            "validation_failed",
            f"{name} {problem}: it is the dedup key",
            details=[FieldError(field=where, message=problem)],
        )
    return key


def _unknown_source(source: str) -> ApiError:
    shown = source if len(source) <= 64 else source[:64] + "…"
    if source == "razorpay":
        hint = (
            "set RAZORPAY_WEBHOOK_SECRET (the webhook secret from Razorpay's dashboard; "
            "several, comma-separated, for rotation) and restart to turn it on"
        )
    elif not valid_source_name(source):
        hint = "a source's name is 1-64 of a-z, 0-9, '_', '-' (see the sources setting)"
    else:
        env = shown.upper().replace("-", "_")
        hint = (
            "add it to the sources setting to turn it on (EVENTMILL_SOURCES__"
            f"{env}__SCHEME and EVENTMILL_SOURCES__{env}__SECRETS, or [sources.{shown}] "
            "in the config file)"
        )
    return ApiError(
        404, "unknown_source", f"no webhook source named {shown!r} is configured; {hint}"
    )


_RAZORPAY_DOC: dict[str, Any] = {
    **_JSON_BODY,
    # Documented here rather than as Header() parameters: the handler reads the raw
    # headers itself, and FastAPI would otherwise parse them on every request.
    "parameters": [
        {
            "name": "X-Razorpay-Signature",
            "in": "header",
            "required": True,
            "description": "Hex HMAC-SHA256 of the raw body with the webhook secret.",
            "schema": {"type": "string"},
        },
        {
            "name": "X-Razorpay-Event-Id",
            "in": "header",
            "required": False,
            "description": "Razorpay's event id: the dedup key.",
            "schema": {"type": "string"},
        },
    ],
}


async def receive(ctx: IngestContext, request: Request, source: str) -> Response:
    """Verify, parse, transform, validate and durably ingest one webhook; count it, and
    keep a refused one in the store's journal of rejected webhooks."""
    metrics = ctx.metrics
    if metrics is None:
        return await _receive(ctx, request, source)
    label = source if source in ctx.config.receivers else UNCONFIGURED_SOURCE
    started = time.perf_counter()
    try:
        response = await _receive(ctx, request, source)
    except BaseException as exc:
        metrics.finished(label, started, exc)
        if isinstance(exc, Exception):
            _reject(ctx, request, source, exc)
        raise
    metrics.finished(label, started)
    return response


def _reject(ctx: IngestContext, request: Request, source: str, exc: Exception) -> None:
    """Journal a refused webhook (4xx): source, status, code, message, safe headers."""
    store = ctx.resources.store
    if store is None:
        return
    if isinstance(exc, ApiError):
        error = exc
    elif isinstance(exc, EventmillError):
        error = api_error_for(exc)
    else:
        return
    if error.status >= 500:
        return
    receiver = ctx.config.receivers.get(source)
    store.journal.rejected(
        source=source,
        status=error.status,
        reason=error.error,
        message=error.message,
        headers=request.headers,
        secret_headers=receiver.scheme.signature_headers if receiver is not None else (),
    )


async def _receive(ctx: IngestContext, request: Request, source: str) -> Response:
    receiver: Receiver | None = ctx.config.receivers.get(source)
    if receiver is None:
        raise _unknown_source(source)
    raw = await read_limited(request, ctx.config.max_body_bytes)
    headers = request.headers
    verified = receiver.scheme.verify(headers, raw)
    body = parse_json(raw)
    external_id = _dedup_key(verified, body, raw)
    event = receiver.transformer(
        WebhookInput(
            source=source,
            body=body,
            external_id=external_id,
            headers=headers,  # lower-case names (Starlette's Headers)
        )
    )
    ctx.config.registry.validate(event)
    if not event.metadata.trace_id:
        event.metadata.trace_id = TraceContext.continue_from(headers.get(TRACEPARENT_KEY)).trace_id
    [accepted] = await ingest(ctx, [(event, external_id)])
    if ctx.metrics is not None:
        ctx.metrics.accepted(
            source, new=int(not accepted.duplicate), duplicate=int(accepted.duplicate)
        )
    content = orjson.dumps({"id": accepted.id, "duplicate": accepted.duplicate})
    return Response(content, media_type="application/json")  # a WebhookAccepted


def routes(ctx: IngestContext) -> APIRouter:
    """The webhook receivers, bound to the ingest feature's context."""
    router = APIRouter(tags=["webhooks"])

    async def razorpay_webhook(request: Request) -> Response:
        """Verify `X-Razorpay-Signature` against every configured `RAZORPAY_WEBHOOK_SECRET`,
        store the event `razorpay.<event>` (dedup on `X-Razorpay-Event-Id`) and publish it
        to topic `events`, keyed by user id. Answers well inside Razorpay's 5-second window.
        """
        return await receive(ctx, request, "razorpay")

    router.add_api_route(
        "/webhooks/razorpay",
        razorpay_webhook,
        methods=["POST"],
        response_model=WebhookAccepted,
        responses=_ERRORS,
        openapi_extra=_RAZORPAY_DOC,
        summary="Receive a Razorpay webhook",
        route_class_override=DirectRoute,  # the hot path: no dependency solving
    )
    router.add_api_route(
        "/api/webhooks/razorpay",  # the system description's path, same receiver
        razorpay_webhook,
        methods=["POST"],
        response_model=WebhookAccepted,
        responses=_ERRORS,
        openapi_extra=_RAZORPAY_DOC,
        summary="Receive a Razorpay webhook (alias of /webhooks/razorpay)",
        route_class_override=DirectRoute,
    )

    @router.post(
        "/webhooks/{source}",
        response_model=WebhookAccepted,
        responses=_ERRORS,
        openapi_extra=_JSON_BODY,
        summary="Receive a webhook from a configured source",
    )
    async def source_webhook(
        request: Request,
        source: Annotated[str, Path(description="A source named in the `sources` setting.")],
    ) -> Response:
        """Verify the request with the source's scheme — Standard Webhooks (`webhook-id`,
        `webhook-timestamp`, `webhook-signature`), GitHub (`X-Hub-Signature-256`,
        `X-GitHub-Delivery`), Stripe (`Stripe-Signature`) or plain HMAC — store the event
        `<source>.<type>` (dedup on the provider's delivery id) and publish it to `events`.
        """
        return await receive(ctx, request, source)

    return router
