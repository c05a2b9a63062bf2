"""The delivery API: ``/v1/endpoints`` and ``/v1/deliveries``.

Callers: an API key with scope ``admin`` manages every endpoint and delivery; an end
user's JWT (``sub`` = user id) only those whose ``user_id`` is theirs. An operator's JWT
(claim ``"eventmill": {"all_users": true}``, the dashboard's token) sees and retries
every user's deliveries, as it sees every user's events; endpoints stay their owner's
and the admin key's. Another user's endpoint or delivery answers 404, exactly as an
unknown id does, so ids cannot be probed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel

from eventmill.delivery.config import DeliverySettings
from eventmill.delivery.models import (
    DeliveryDetailOut,
    DeliveryOut,
    DeliveryPageOut,
    EndpointCreated,
    EndpointIn,
    EndpointOut,
    EndpointPageOut,
    EndpointPatch,
    RecoverIn,
    RecoverOut,
    RotateIn,
    SecretOut,
    check_url,
)
from eventmill.delivery.store import DeliveryRecord, DeliveryStore, EndpointRecord
from eventmill.errors import EventValidationError
from eventmill.web.auth import require_principal
from eventmill.web.body import read_model
from eventmill.web.errors import ApiError, FieldError, error_responses
from eventmill.web.tokens import Principal

__all__ = ["routes"]

MAX_BODY = 64 * 1024
M = TypeVar("M", bound=BaseModel)

Caller = Annotated[Principal, Depends(require_principal("admin"))]
EndpointId = Annotated[str, Path(max_length=64, description="The endpoint's id.")]
DeliveryId = Annotated[str, Path(max_length=64, description="The delivery's id (its webhook-id).")]


def _not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what} with id {ident!r}")


def _endpoint_disabled(endpoint_id: str, what: str) -> ApiError:
    return ApiError(
        409,
        "endpoint_disabled",
        f"endpoint {endpoint_id!r} is disabled, so nothing would be sent; enable it first "
        f'(PATCH /v1/endpoints/{endpoint_id} with {{"disabled": false}}), then {what}',
    )


async def _body(request: Request, model: type[M], *, optional: bool = False) -> M:
    return await read_model(request, model, limit=MAX_BODY, optional=optional)


def _url(url: str, settings: DeliverySettings) -> str:
    try:
        return check_url(url, settings)
    except ValueError as exc:
        raise ApiError(
            422,
            "validation_failed",
            str(exc),
            details=[FieldError(field="url", message=str(exc))],
        ) from None


def _sees_deliveries_of(caller: Principal, user_id: str | None) -> bool:
    """Whether the caller may see (and retry) deliveries for ``user_id``'s endpoints."""
    return caller.all_users or caller.may_act_for(user_id)


def _user_scope(caller: Principal, user_id: str | None, *, deliveries: bool = False) -> str | None:
    """The user filter of a list: an end user sees only their own (an operator's token
    every user's ``deliveries``)."""
    if caller.is_admin or (deliveries and caller.all_users):
        return user_id
    if user_id is not None and user_id != caller.user_id:
        raise ApiError(404, "not_found", "no such user's items are visible to this caller")
    return caller.user_id


def routes(settings: DeliverySettings, store: Callable[[], DeliveryStore]) -> APIRouter:
    """The endpoint and delivery routes; ``store`` gives the open delivery store."""
    router = APIRouter(prefix="/v1")

    async def owned_endpoint(caller: Principal, endpoint_id: str) -> EndpointRecord:
        ep = await store().get_endpoint(endpoint_id)
        if ep is None or not caller.may_act_for(ep.user_id):
            raise _not_found("endpoint", endpoint_id)
        return ep

    async def owned_delivery(caller: Principal, delivery_id: str) -> DeliveryRecord:
        d = await store().get_delivery(delivery_id)
        if d is None or not _sees_deliveries_of(caller, d.user_id):
            raise _not_found("delivery", delivery_id)
        return d

    # -- endpoints --------------------------------------------------------------------

    @router.post(
        "/endpoints",
        status_code=201,
        response_model=EndpointCreated,
        responses=error_responses(400, 401, 403, 413, 415, 422, 503),
        tags=["endpoints"],
        summary="Create an endpoint",
    )
    async def create_endpoint(request: Request, caller: Caller) -> EndpointCreated:
        """Create an endpoint; the answer carries its signing `secret`, shown only here
        and on rotation. An end user creates endpoints for themselves only."""
        body = await _body(request, EndpointIn)
        user_id = body.user_id
        if not caller.is_admin:
            if user_id is not None and user_id != caller.user_id:
                raise ApiError(403, "forbidden", "an end user creates endpoints for themselves")
            user_id = caller.user_id
        ep = await store().create_endpoint(
            url=_url(body.url, settings),
            user_id=user_id,
            event_types=body.event_types,
            description=body.description,
            headers=body.headers,
            rate_limit=body.rate_limit,
            disabled=body.disabled,
        )
        return EndpointCreated.of(ep)

    @router.get(
        "/endpoints",
        response_model=EndpointPageOut,
        responses=error_responses(400, 401, 403, 404, 422, 503),
        tags=["endpoints"],
        summary="List endpoints",
    )
    async def list_endpoints(
        caller: Caller,
        user_id: Annotated[str | None, Query(max_length=256)] = None,
        disabled: Annotated[bool | None, Query()] = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> EndpointPageOut:
        """Endpoints, newest first; an end user sees only their own."""
        page = await store().list_endpoints(
            user_id=_user_scope(caller, user_id), disabled=disabled, after=cursor, limit=limit
        )
        return EndpointPageOut(
            endpoints=[EndpointOut.of(e) for e in page.items],
            next_cursor=page.next_cursor,
            has_more=page.has_more,
        )

    @router.get(
        "/endpoints/{endpoint_id}",
        response_model=EndpointOut,
        responses=error_responses(401, 403, 404, 503),
        tags=["endpoints"],
        summary="Get an endpoint",
    )
    async def get_endpoint(caller: Caller, endpoint_id: EndpointId) -> EndpointOut:
        """One endpoint (without its secret)."""
        return EndpointOut.of(await owned_endpoint(caller, endpoint_id))

    @router.patch(
        "/endpoints/{endpoint_id}",
        response_model=EndpointOut,
        responses=error_responses(400, 401, 403, 404, 413, 415, 422, 503),
        tags=["endpoints"],
        summary="Change an endpoint",
    )
    async def patch_endpoint(
        request: Request, caller: Caller, endpoint_id: EndpointId
    ) -> EndpointOut:
        """Change the fields given; `"disabled": false` re-enables the endpoint."""
        await owned_endpoint(caller, endpoint_id)
        body = await _body(request, EndpointPatch)
        changes: dict[str, Any] = {}
        for name in body.model_fields_set:
            value = getattr(body, name)
            if value is None and name not in ("rate_limit",):
                raise EventValidationError(f"{name} cannot be null", field=name)
            changes[name] = value
        if "url" in changes:
            changes["url"] = _url(changes["url"], settings)
        if "user_id" in changes and not caller.is_admin and changes["user_id"] != caller.user_id:
            raise ApiError(403, "forbidden", "an end user cannot give an endpoint away")
        ep = await store().update_endpoint(endpoint_id, changes)
        if ep is None:
            raise _not_found("endpoint", endpoint_id)
        return EndpointOut.of(ep)

    @router.delete(
        "/endpoints/{endpoint_id}",
        status_code=204,
        responses=error_responses(401, 403, 404, 503),
        tags=["endpoints"],
        summary="Delete an endpoint",
    )
    async def delete_endpoint(caller: Caller, endpoint_id: EndpointId) -> Response:
        """Delete the endpoint, its deliveries and their attempts."""
        await owned_endpoint(caller, endpoint_id)
        if not await store().delete_endpoint(endpoint_id):
            raise _not_found("endpoint", endpoint_id)
        return Response(status_code=204)

    @router.post(
        "/endpoints/{endpoint_id}/rotate-secret",
        response_model=SecretOut,
        responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
        tags=["endpoints"],
        summary="Rotate an endpoint's secret",
    )
    async def rotate_secret(request: Request, caller: Caller, endpoint_id: EndpointId) -> SecretOut:
        """A new secret; the current one keeps signing beside it for the overlap
        (body `{"overlap_seconds": …}`, default `delivery.rotation_overlap_seconds`).
        409 `rotation_in_progress` while an earlier rotation's old secret still signs
        (unless the overlap is 0, which stops every old secret at once)."""
        await owned_endpoint(caller, endpoint_id)
        body = await _body(request, RotateIn, optional=True)
        overlap = body.overlap_seconds
        if overlap is None:
            overlap = settings.rotation_overlap_seconds
        rotation = await store().rotate_secret(endpoint_id, overlap)
        if rotation is None:
            raise _not_found("endpoint", endpoint_id)
        if rotation.refused_until is not None:
            raise ApiError(
                409,
                "rotation_in_progress",
                f"the secret before the current one still signs until "
                f"{rotation.refused_until.isoformat(timespec='seconds')}, and a rotation now "
                "would cut it off early; rotate after that time, or with "
                '{"overlap_seconds": 0} to stop every old secret at once',
            )
        ep = rotation.endpoint
        return SecretOut(
            id=ep.id, secret=ep.secret, previous_secret_expires_at=ep.previous_secret_expires_at
        )

    @router.post(
        "/endpoints/{endpoint_id}/recover",
        response_model=RecoverOut,
        responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
        tags=["endpoints"],
        summary="Resend an endpoint's failed deliveries",
    )
    async def recover(request: Request, caller: Caller, endpoint_id: EndpointId) -> RecoverOut:
        """Every failed delivery of the endpoint created since `since` (and before
        `until`, if given) is due again at once, with a new round of the schedule."""
        ep = await owned_endpoint(caller, endpoint_id)
        body = await _body(request, RecoverIn)
        if ep.disabled:
            raise _endpoint_disabled(endpoint_id, "recover")
        count = await store().recover(endpoint_id, body.since, body.until)
        return RecoverOut(requeued=count)

    # -- deliveries -------------------------------------------------------------------

    @router.get(
        "/deliveries",
        response_model=DeliveryPageOut,
        responses=error_responses(400, 401, 403, 404, 422, 503),
        tags=["deliveries"],
        summary="List deliveries",
    )
    async def list_deliveries(
        caller: Caller,
        endpoint_id: Annotated[str | None, Query(max_length=64)] = None,
        event_id: Annotated[str | None, Query(max_length=128)] = None,
        user_id: Annotated[str | None, Query(max_length=256)] = None,
        status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query()] = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> DeliveryPageOut:
        """Deliveries matching every filter given, newest first; an end user sees
        only deliveries to their own endpoints (an operator's token, every user's)."""
        if endpoint_id is not None:
            ep = await store().get_endpoint(endpoint_id)
            if ep is None or not _sees_deliveries_of(caller, ep.user_id):
                raise _not_found("endpoint", endpoint_id)
        page = await store().list_deliveries(
            endpoint_id=endpoint_id,
            event_id=event_id,
            user_id=_user_scope(caller, user_id, deliveries=True),
            status=status,
            after=cursor,
            limit=limit,
        )
        return DeliveryPageOut(
            deliveries=[DeliveryOut.of(d) for d in page.items],
            next_cursor=page.next_cursor,
            has_more=page.has_more,
        )

    @router.get(
        "/deliveries/{delivery_id}",
        response_model=DeliveryDetailOut,
        responses=error_responses(401, 403, 404, 503),
        tags=["deliveries"],
        summary="Get a delivery and its attempts",
    )
    async def get_delivery(caller: Caller, delivery_id: DeliveryId) -> DeliveryDetailOut:
        """The delivery and its attempts: time, status code, latency, error, and the
        first 1 KiB of each answer's body."""
        d = await owned_delivery(caller, delivery_id)
        return DeliveryDetailOut.with_attempts(d, await store().attempts_of(d.id))

    @router.post(
        "/deliveries/{delivery_id}/retry",
        status_code=202,
        response_model=DeliveryOut,
        responses=error_responses(401, 403, 404, 409, 503),
        tags=["deliveries"],
        summary="Send a delivery again",
    )
    async def retry_delivery(caller: Caller, delivery_id: DeliveryId) -> DeliveryOut:
        """Make the delivery due now, with a new round of the schedule (also after it
        succeeded: the receiver gets it again, with the same webhook-id). 409
        ``delivery_in_flight`` while an attempt is sending it: its outcome shows in
        ``GET /v1/deliveries/{id}``; retry after it, if it still needs one. 409
        ``endpoint_disabled`` while its endpoint is disabled: enable it first."""
        await owned_delivery(caller, delivery_id)
        retried = await store().retry_delivery(delivery_id)
        if retried is None:
            raise _not_found("delivery", delivery_id)
        if retried.endpoint_disabled:
            raise _endpoint_disabled(retried.delivery.endpoint_id, "retry")
        if not retried.queued:
            raise ApiError(
                409,
                "delivery_in_flight",
                f"delivery {delivery_id!r} is being sent right now; its outcome shows in "
                f"GET /v1/deliveries/{delivery_id} (retry after it, if it still needs one)",
            )
        return DeliveryOut.of(retried.delivery)

    return router
