"""The operator's routes (API key with scope ``admin``): replay, trace, rejected webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from eventmill.events.envelope import UtcDatetime
from eventmill.operations.replay import replay
from eventmill.operations.trace import trace
from eventmill.web.auth import AdminKey
from eventmill.web.body import read_model
from eventmill.web.errors import ApiError, error_responses
from eventmill.web.seam import Resources

__all__ = ["MAX_REPLAY", "routes"]

MAX_REPLAY = 100_000
"""Most events one ``POST /v1/replay`` publishes; continue from ``last_position``."""


class ReplayIn(BaseModel):
    """Which stored events to publish again, and where."""

    model_config = {"extra": "forbid"}

    topic: str = Field(default="events", pattern=r"^[A-Za-z0-9_.\-]{1,200}$")
    """Topic to publish to (default ``events``)."""
    after_position: int = Field(default=0, ge=0, le=2**63 - 1)
    """Only events stored after this position (default: from the start)."""
    since: UtcDatetime | None = None
    """Only events created at or after this time."""
    until: UtcDatetime | None = None
    """Only events created before this time."""
    user_id: str | None = Field(default=None, max_length=256)
    event_name: str | None = Field(default=None, max_length=200)
    """Exact name or a pattern with ``*``."""
    source: str | None = Field(default=None, max_length=64)
    limit: int = Field(default=10_000, ge=1, le=MAX_REPLAY)
    """Most events to publish in this call (default 10,000)."""


class ReplayOut(BaseModel):
    """What the replay published."""

    published: int
    last_position: int | None
    """Position of the last event published: pass it as ``after_position`` to continue."""
    complete: bool
    """Whether every matching event was published."""


class HopOut(BaseModel):
    at: datetime
    hop: str
    detail: dict[str, Any]


class TraceOut(BaseModel):
    """An event and every hop recorded for it, oldest first."""

    event_id: str
    event_name: str
    source: str
    user_id: str | None
    position: int
    hops: list[HopOut]


class RejectedOut(BaseModel):
    seq: int
    at: datetime
    source: str
    status: int
    reason: str
    message: str
    headers: dict[str, str]


class RejectedPageOut(BaseModel):
    """Rejected webhooks, newest first; pass ``next_before`` as ``before`` for more."""

    rejected: list[RejectedOut]
    next_before: int | None


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


def routes(resources: Resources) -> APIRouter:
    """The operator's routes, bound to the shared resources."""
    router = APIRouter(prefix="/v1", tags=["operations"])

    @router.post(
        "/replay",
        response_model=ReplayOut,
        responses=error_responses(400, 401, 403, 413, 415, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": _schema(ReplayIn)}},
            }
        },
        summary="Publish stored events again",
    )
    async def replay_events(request: Request, key: AdminKey) -> ReplayOut:
        """Publish the stored events matching the filter, oldest first, onto `topic`
        (a consumer that joined late catches up). Scope `admin`."""
        body = await read_model(request, ReplayIn, optional=True)
        result = await replay(
            resources.require_events(),
            resources.require_bus(),
            topic=body.topic,
            after_position=body.after_position,
            since=body.since,
            until=body.until,
            user_id=body.user_id,
            event_name=body.event_name,
            source=body.source,
            limit=body.limit,
        )
        return ReplayOut(
            published=result.published, last_position=result.last_position, complete=result.complete
        )

    @router.get(
        "/traces/{event_id}",
        response_model=TraceOut,
        responses=error_responses(401, 403, 404, 503),
        summary="Every hop of one event",
    )
    async def trace_event(
        event_id: Annotated[str, Path(max_length=128)], key: AdminKey
    ) -> TraceOut:
        """Received and stored, published, handled by which groups, delivered to which
        endpoints with which attempts, pushed to how many connections. Scope `admin`."""
        found = await trace(resources.require_store(), event_id)
        if found is None:
            raise ApiError(404, "not_found", f"no event with id {event_id!r}")
        e = found.event
        return TraceOut(
            event_id=e.id,
            event_name=e.event.event_name,
            source=e.event.source,
            user_id=e.event.user_id,
            position=e.position,
            hops=[HopOut(at=h.at, hop=h.hop, detail=h.detail) for h in found.hops],
        )

    @router.get(
        "/rejected-webhooks",
        response_model=RejectedPageOut,
        responses=error_responses(401, 403, 422, 503),
        summary="Webhooks the service refused",
    )
    async def rejected(
        key: AdminKey,
        source: Annotated[str | None, Query(max_length=64)] = None,
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> RejectedPageOut:
        """Refused webhooks (bad signature, unknown source, bad body), newest first,
        with their headers minus secrets. Scope `admin`."""
        rows = await resources.require_store().journal.rejections(
            source=source, before=before, limit=limit
        )
        return RejectedPageOut(
            rejected=[RejectedOut.model_validate(r, from_attributes=True) for r in rows],
            next_before=rows[-1].seq if len(rows) == limit else None,
        )

    return router
