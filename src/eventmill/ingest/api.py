"""The publish and query API for services: ``POST /v1/events``, ``GET /v1/events[/{id}]``.

``POST /v1/events`` (scope ``publish``) takes one event or a JSON array of up to
:data:`MAX_BATCH` events, validates each against the envelope and the type registry
(422 naming the field, e.g. ``1.payload.amount`` for the second event of a batch),
and ingests them on the durable path. An ``Idempotency-Key`` header names the
request (per API key, :mod:`eventmill.ingest.idempotency`): a retry with the same
body is answered what the first was (``Idempotent-Replayed: true``), another body
under the key is 409 ``idempotency_conflict`` and stores nothing. Without one, an
event is deduplicated only by its ``id`` if the caller chose it. A chosen id already
stored with the same name, source, user and payload is a duplicate (200,
``"duplicate": true``); with anything of those different it is 409 ``duplicate_event``
naming the id, and nothing of the request is stored (checked before storing; a conflict
with an event stored meanwhile by a concurrent request is caught after, the rest of that
batch then stored): a second, different event is never dropped in silence. A batch
holding one chosen id twice is alike: the same event twice is stored once (the second
answered ``"duplicate": true``), two different events are 409 and store nothing.

``GET /v1/events`` (scope ``read``) filters by user, event name (``*`` wildcards),
source and time range, and pages with an opaque cursor. A filter value no stored
event can hold (a control character in ``user_id``, an invalid ``source`` or id)
matches nothing: an empty page, or 404 for one event.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from eventmill.errors import EventValidationError
from eventmill.events import SOURCE_RE, Event, EventMetadata
from eventmill.events.envelope import OUT_OF_RANGE, USER_ID_RE, to_utc
from eventmill.ingest.context import IngestContext
from eventmill.ingest.idempotency import REPLAYED_HEADER, run_idempotent
from eventmill.ingest.pipeline import ingest
from eventmill.store import ApiKeyRecord, DuplicateEventError, StoredEvent
from eventmill.web.auth import PublishKey, ReadKey
from eventmill.web.body import parse_json, read_limited
from eventmill.web.errors import ApiError, FieldError, error_responses
from eventmill.web.seam import STREAM_CONTROL_NAMES
from eventmill.web.tracing import TRACEPARENT_KEY, TraceContext

__all__ = ["MAX_BATCH", "refuse_other_content", "routes", "validate_item"]

MAX_BATCH = 500
"""Most events one ``POST /v1/events`` may carry."""
_IDEMPOTENCY_KEY_MAX = 200

_DEFAULTED = frozenset({"id", "created_at", "metadata", "processed_at"})
# What stored values look like (the envelope's rules): a filter value outside them
# matches nothing, and is never sent to the database (PostgreSQL refuses NUL in text).
_STORED_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_NOTHING = ""
"""A filter value no stored user id or source equals (both are at least 1 character),
safe for every database: what an impossible filter value is replaced with."""


_TIME_FORMS = (
    "An RFC 3339 date-time (`2024-01-20T10:30:00Z`; without an offset, UTC) or Unix seconds."
)
_EXPECTED_TIME = (
    "expected an RFC 3339 date-time (2024-01-20T10:30:00Z; without an offset, UTC) "
    "or Unix seconds in digits (1705746600, 1705746600.5)"
)
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)
_NUMBER = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,9})?")
_DATE_START = re.compile(r"[0-9]{4}-")


def _time(name: str, value: str | None) -> datetime | None:
    """A time filter: documented as a plain string (what it is in a query): Unix
    seconds in digits, or a date-time as pydantic parses them; 422 naming the parameter
    and the forms expected when it is neither (``1e10``, ``NaN``: pydantic would read
    ``1.5e9`` as seconds, ``3e10`` as milliseconds, and say of ``1e10`` only "input is
    too short")."""
    if value is None:
        return None
    try:
        if _NUMBER.fullmatch(value):  # Unix seconds, however large (pydantic would read
            # a number past 2e10 as milliseconds)
            return datetime.fromtimestamp(float(value), UTC)
        if _DATE_START.match(value) is None:
            problem = f"not a time: {_EXPECTED_TIME}"
        else:
            return to_utc(_DATETIME.validate_python(value))
    except ValidationError as exc:
        reason = exc.errors(include_input=False)[0]["msg"]
        reason = reason.removeprefix("Input should be a valid datetime or date, ")
        problem = f"not a valid date-time ({reason}): {_EXPECTED_TIME}"
    except (OverflowError, OSError, ValueError):
        problem = OUT_OF_RANGE
    raise ApiError(
        422,
        "validation_failed",
        f"invalid query.{name}: {problem}",
        details=[FieldError(field=f"query.{name}", message=problem)],
    )


def _matchable(value: str | None, rule: re.Pattern[str]) -> str | None:
    return value if value is None or rule.fullmatch(value) is not None else _NOTHING


class EventIn(BaseModel):
    """An event to publish (``id`` and ``created_at`` default to new values). Its
    payload is checked against the model registered for its name, if any; a source
    configured for signed webhooks is refused."""

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")
    event_name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}$")
    source: str = Field(default="internal", pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")
    user_id: str | None = Field(default=None, pattern=r"^[^\x00-\x1f\x7f]{1,256}$")
    payload: Any = None
    metadata: EventMetadata | None = None
    created_at: datetime | None = None


def _event_in_schema() -> dict[str, Any]:
    schema = EventIn.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


class AcceptedEvent(BaseModel):
    """The outcome for one published event."""

    id: str
    duplicate: bool
    """Stored before (same Idempotency-Key or id): not published again."""


class PublishResult(BaseModel):
    """Ids of the stored events, in request order."""

    ids: list[str]
    events: list[AcceptedEvent]


class StoredEventOut(BaseModel):
    """An event as stored, with its position and publication time."""

    id: str
    event_name: str
    source: str
    user_id: str | None
    payload: Any
    metadata: EventMetadata
    created_at: datetime
    processed_at: datetime | None
    position: int
    """Monotonic per store: the order events were stored in."""
    stored_at: datetime
    published_at: datetime | None
    """When the bus accepted it (``null``: not yet, the relay will publish it)."""


class EventPageOut(BaseModel):
    """One page of events; pass ``next_cursor`` as ``cursor`` for the next one."""

    events: list[StoredEventOut]
    next_cursor: str | None
    """Cursor after the last event returned; resume (or tail) from it."""
    has_more: bool
    """Whether more matching events exist right now."""


def _out(stored: StoredEvent) -> dict[str, Any]:
    data = stored.event.to_dict()
    data.update(
        position=stored.position, stored_at=stored.stored_at, published_at=stored.published_at
    )
    return data


def validate_item(ctx: IngestContext, item: Any, where: str = "") -> Event:
    """The event ``item`` (parsed JSON) describes, checked as ``POST /v1/events`` checks
    it: the envelope, the names and sources reserved for the service and for signed
    webhooks, the registry. Raises :class:`EventValidationError` (→ 422) naming the
    field, prefixed by ``where`` (the event's index in a batch). ``eventmill publish``
    checks its event with it too."""
    if not isinstance(item, dict):
        message = "an event must be a JSON object"
        raise EventValidationError(
            f"event {where}: {message}" if where else f"body: {message}", field=where or None
        )
    try:
        data = {k: v for k, v in item.items() if v is not None or k not in _DEFAULTED}
        event = Event.from_dict(data)
        if event.event_name in STREAM_CONTROL_NAMES:
            raise EventValidationError(
                f"event name {event.event_name!r} is reserved for the SSE stream's own "
                "messages and the browser's EventSource events",
                field="event_name",
            )
        if event.source == "system":
            raise EventValidationError(
                "source 'system' is reserved for the service's own events", field="source"
            )
        if event.source in ctx.config.receivers or event.source == "razorpay":
            raise EventValidationError(
                f"source {event.source!r} is reserved for signed webhooks", field="source"
            )
        ctx.config.registry.validate(event)
    except EventValidationError as exc:
        if not where:
            raise
        errors = [{**e, "field": f"{where}.{e['field']}".rstrip(".")} for e in exc.errors]
        field = f"{where}.{exc.field}" if exc.field else where
        raise EventValidationError(f"event {where}: {exc}", field=field, errors=errors) from exc
    return event


def _content(event: Event) -> tuple[Any, ...]:
    """What makes an event that event: a retry carries the same (its time and metadata
    may be the retry's own)."""
    return (event.event_name, event.source, event.user_id, event.payload)


def refuse_other_content(
    firsts: list[Event | None], events: list[Event], batch: bool, *, stored: bool
) -> None:
    """409 if an event's chosen id is taken by another event: ``firsts[i]`` is the one
    stored under event ``i``'s id, if any (``stored``: whether the request's other
    events were stored already). Raises :class:`DuplicateEventError`; ``eventmill
    publish`` refuses its event with it too."""
    for i, (first, event) in enumerate(zip(firsts, events, strict=True)):
        if first is not None and _content(first) != _content(event):
            where = f"event {i}: " if batch else ""
            rest = ""
            if len(events) > 1:
                rest = (
                    " (the batch's other events were stored)"
                    if stored
                    else " (nothing of the batch was stored)"
                )
            raise DuplicateEventError(
                f"{where}an event with id {event.id!r} is already stored with another "
                f"name, source, user or payload{rest}; choose a new id for a new event"
            )


def _refuse_reused_ids(events: list[Event], chosen: list[bool]) -> None:
    """409 if the batch holds two different events under one chosen id, decided before
    anything is stored. The same event twice is stored once (the second is answered as
    its duplicate), as when it is sent again in another request."""
    first_of: dict[str, int] = {}
    for i, (event, own) in enumerate(zip(events, chosen, strict=True)):
        first = first_of.setdefault(event.id, i) if own else i
        if first != i and _content(events[first]) != _content(event):
            raise DuplicateEventError(
                f"event {i}: event {first} of the batch has the id {event.id!r} with "
                "another name, source, user or payload (nothing of the batch was stored); "
                "choose a new id for a new event"
            )


def routes(ctx: IngestContext) -> APIRouter:
    """The publish and query routes, bound to the ingest feature's context."""
    router = APIRouter(prefix="/v1", tags=["events"])

    @router.post(
        "/events",
        response_model=PublishResult,
        responses={
            200: {
                "description": "The events are stored and published (or were before)",
                "headers": {
                    REPLAYED_HEADER: {
                        "description": "`true` when this is the answer recorded for an "
                        "earlier request with the same Idempotency-Key",
                        "schema": {"type": "string", "enum": ["true"]},
                    }
                },
            },
            **error_responses(400, 401, 403, 409, 413, 415, 422, 503),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": f"One event, or a JSON array of up to {MAX_BATCH} events.",
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                _event_in_schema(),
                                {
                                    "type": "array",
                                    "items": _event_in_schema(),
                                    "minItems": 1,
                                    "maxItems": MAX_BATCH,
                                },
                            ]
                        }
                    }
                },
            }
        },
        summary="Publish one event or a batch",
    )
    async def publish_events(
        request: Request,
        key: PublishKey,
        idempotency_key: Annotated[
            str | None,
            Header(
                min_length=1,  # an empty key would be no key: the caller meant one
                max_length=_IDEMPOTENCY_KEY_MAX,
                description="Names the request, per API key: a retry with the same body "
                "is answered what the first request was answered (`Idempotent-Replayed: "
                "true`); another body under the key is 409 `idempotency_conflict`. Keys "
                "are remembered for `idempotency_ttl_seconds` (24 h by default).",
            ),
        ] = None,
    ) -> Response:
        """Validate the events against the registry, store them, publish them to topic
        `events` (keyed by user id) and answer their ids. Scope `publish`."""
        metrics = ctx.metrics
        if metrics is None:
            return await accept(request, key, idempotency_key)
        started = time.perf_counter()
        try:
            response = await accept(request, key, idempotency_key)
        except BaseException as exc:
            metrics.finished("api", started, exc)
            raise
        metrics.finished("api", started)
        return response

    async def accept(request: Request, key: ApiKeyRecord, idempotency_key: str | None) -> Response:
        raw = await read_limited(request, ctx.config.max_body_bytes)
        body = parse_json(raw)
        batch = isinstance(body, list)
        items: list[Any] = body if batch else [body]
        if not items:
            raise ApiError(422, "validation_failed", "the batch is empty")
        if len(items) > MAX_BATCH:
            raise ApiError(422, "validation_failed", f"a batch holds at most {MAX_BATCH} events")
        events = [validate_item(ctx, item, str(i) if batch else "") for i, item in enumerate(items)]
        trace_id = TraceContext.continue_from(request.headers.get(TRACEPARENT_KEY)).trace_id
        for event in events:
            if not event.metadata.trace_id:
                event.metadata.trace_id = trace_id

        async def run(pairs: list[tuple[Event, str | None]], retry_safe: bool = True) -> bytes:
            # Another event under a chosen id the batch uses already or the store holds:
            # refused before anything is stored (checked again after, for one stored
            # meanwhile by a concurrent request)
            if any(chosen):
                _refuse_reused_ids(events, chosen)
                taken = await ctx.require_events().get_many(
                    [e.id for e, own in zip(events, chosen, strict=True) if own]
                )
                firsts = [
                    taken[e.id].event if own and e.id in taken else None
                    for e, own in zip(events, chosen, strict=True)
                ]
                refuse_other_content(firsts, events, batch, stored=False)
            results = await ingest(ctx, pairs, retry_safe=retry_safe)
            firsts = [
                r.event if own and r.duplicate else None
                for r, own in zip(results, chosen, strict=True)
            ]
            refuse_other_content(firsts, events, batch, stored=True)
            if ctx.metrics is not None:
                duplicates = sum(r.duplicate for r in results)
                ctx.metrics.accepted("api", new=len(results) - duplicates, duplicate=duplicates)
            out = PublishResult(
                ids=[r.id for r in results],
                events=[AcceptedEvent(id=r.id, duplicate=r.duplicate) for r in results],
            )
            return out.model_dump_json().encode()

        chosen = [isinstance(item, dict) and item.get("id") is not None for item in items]
        if idempotency_key:
            return await run_idempotent(
                ctx,
                owner=key.id,
                key=idempotency_key,
                route="POST /v1/events",
                body=body,
                events=events,
                chosen_ids=chosen,
                run=run,
            )
        # Without a key an event is deduplicated only by an id the caller chose.
        content = await run([(event, None) for event in events], all(chosen))
        return Response(content, media_type="application/json")

    @router.get(
        "/events",
        response_model=EventPageOut,
        responses=error_responses(400, 401, 403, 422, 503),
        summary="Query stored events",
    )
    async def list_events(
        request: Request,
        key: ReadKey,
        user_id: Annotated[str | None, Query(description="Only this user's events.")] = None,
        event_name: Annotated[
            str | None, Query(description="Exact name or pattern with `*` (`razorpay.payment.*`).")
        ] = None,
        source: Annotated[str | None, Query(description="Only events from this source.")] = None,
        since: Annotated[
            str | None, Query(description=f"created_at >= since. {_TIME_FORMS}")
        ] = None,
        until: Annotated[
            str | None, Query(description=f"created_at < until. {_TIME_FORMS}")
        ] = None,
        cursor: Annotated[
            str | None, Query(description="`next_cursor` of the previous page.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size (1-1000).")] = 100,
        order: Annotated[
            Literal["asc", "desc"], Query(description="`asc`: oldest first; `desc`: newest first.")
        ] = "asc",
    ) -> EventPageOut:
        """Page through stored events matching every filter given. Scope `read`."""
        page = await ctx.require_events().query(
            user_id=_matchable(user_id, USER_ID_RE),
            event_name=event_name,
            source=_matchable(source, SOURCE_RE),
            since=_time("since", since),
            until=_time("until", until),
            after=cursor,
            limit=limit,
            order=order,
        )
        return EventPageOut.model_validate(
            {
                "events": [_out(s) for s in page.events],
                "next_cursor": page.next_cursor,
                "has_more": page.has_more,
            }
        )

    @router.get(
        "/events/{event_id}",
        response_model=StoredEventOut,
        responses=error_responses(401, 403, 404, 503),
        summary="Get one stored event",
    )
    async def get_event(
        request: Request,
        key: ReadKey,
        event_id: Annotated[str, Path(max_length=128, description="The event's id.")],
    ) -> StoredEventOut:
        """Return the event with this id. Scope `read`."""
        events = ctx.require_events()
        stored = await events.get(event_id) if _STORED_ID.fullmatch(event_id) else None
        if stored is None:
            raise ApiError(404, "not_found", f"no event with id {event_id!r}")
        return StoredEventOut.model_validate(_out(stored))

    return router
