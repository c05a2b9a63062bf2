"""``eventmill endpoints …`` and ``eventmill deliveries …``: the delivery API's
operations from the command line, run against the store directly (an operator's, i.e.
admin's, view). A running service picks up what they change on its next poll."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from eventmill.cli._common import (
    ConfigOption,
    JsonOption,
    app,
    err,
    fail,
    load_settings,
    open_store,
    out,
)
from eventmill.cli._common import run as run_async
from eventmill.cli._common import when as _when
from eventmill.delivery.config import MAX_OVERLAP_SECONDS
from eventmill.delivery.models import (
    DeliveryDetailOut,
    DeliveryOut,
    EndpointIn,
    EndpointOut,
    check_url,
)
from eventmill.delivery.store import DeliveryStore, Status

T = TypeVar("T")

endpoints_app = typer.Typer(help="Manage outbound webhook endpoints.", no_args_is_help=True)
deliveries_app = typer.Typer(help="Inspect and retry webhook deliveries.", no_args_is_help=True)
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(deliveries_app, name="deliveries")

_out = out
_err = err
_fail = fail


def _run(
    config: Path | None,
    work: Callable[[DeliveryStore, Any], Awaitable[T]],
    *,
    create: bool = False,
) -> T:
    """Run ``work`` on the store; only ``create`` makes an embedded store that is missing.
    On the embedded default, loopback endpoint URLs are allowed as ``serve`` allows them."""
    from eventmill.devmode import with_dev_networks

    settings = with_dev_networks(load_settings(config))

    async def main() -> T:
        async with open_store(settings, create=create) as store:
            return await work(DeliveryStore(store), settings)

    return run_async(main)


_OPTIONS = {
    "url": "URL",
    "user_id": "--user-id",
    "event_types": "--event-type",
    "description": "--description",
    "headers": "--header",
    "rate_limit": "--rate-limit",
}


def _invalid(exc: ValidationError) -> str:
    """Each problem with the option that caused it, in the API's words."""
    problems = []
    for error in exc.errors():
        where = _OPTIONS.get(str(error["loc"][0]), str(error["loc"][0])) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems) or "invalid endpoint"


@endpoints_app.command("create")
def endpoints_create(
    url: Annotated[str, typer.Argument(help="Where deliveries are POSTed.")],
    user_id: Annotated[
        str | None, typer.Option("--user-id", "-u", help="Whose events (default: every user's).")
    ] = None,
    event_type: Annotated[
        list[str] | None,
        typer.Option("--event-type", "-e", help="Event name or pattern (repeatable)."),
    ] = None,
    description: Annotated[str, typer.Option(help="A note about the endpoint.")] = "",
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="Extra header 'Name: value'.")
    ] = None,
    rate_limit: Annotated[float | None, typer.Option(help="Most attempts per second.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create an endpoint and print its signing secret (shown this once)."""
    headers = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep:
            raise _fail(f"header {item!r} must be 'Name: value'", 2)
        headers[name.strip()] = value.strip()
    try:
        body = EndpointIn(
            url=url,
            user_id=user_id,
            event_types=event_type or [],
            description=description,
            headers=headers,
            rate_limit=rate_limit,
        )
    except ValidationError as exc:
        raise _fail(_invalid(exc), 2) from None

    async def create(ds: DeliveryStore, settings: Any) -> Any:
        try:
            checked = check_url(body.url, settings.delivery)
        except ValueError as exc:
            raise _fail(str(exc), 2) from None
        return await ds.create_endpoint(
            url=checked,
            user_id=body.user_id,
            event_types=body.event_types,
            description=body.description,
            headers=body.headers,
            rate_limit=body.rate_limit,
        )

    ep = _run(config, create, create=True)
    _out.print(f"id:     {ep.id}")
    _out.print(f"url:    {escape(ep.url)}")
    _out.print(f"secret: {ep.secret}")
    _err.print("Store the secret now: it cannot be shown again (rotate-secret makes a new one).")


@endpoints_app.command("list")
def endpoints_list(
    user_id: Annotated[str | None, typer.Option("--user-id", "-u")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List endpoints, newest first (never their secrets)."""
    page = _run(config, lambda ds, _: ds.list_endpoints(user_id=user_id, limit=limit))
    if as_json:  # the API's shape (GET /v1/endpoints), one endpoint per line
        for ep in page.items:
            print(EndpointOut.of(ep).model_dump_json())
        return
    table = Table("id", "user", "url", "event types", "disabled", "failing since")
    for ep in page.items:
        table.add_row(
            ep.id,
            ep.user_id or "*",
            escape(ep.url),
            ",".join(ep.event_types) or "*",
            escape(ep.disabled_reason or "yes") if ep.disabled else "",
            _when(ep.failing_since),
        )
    _out.print(table)


@endpoints_app.command("enable")
def endpoints_enable(
    endpoint_id: Annotated[str, typer.Argument(metavar="ID")], config: ConfigOption = None
) -> None:
    """Re-enable an endpoint (clears its failure state)."""
    if _run(config, lambda ds, _: ds.update_endpoint(endpoint_id, {"disabled": False})) is None:
        raise _fail(f"no endpoint with id {endpoint_id!r}")
    _out.print(f"enabled {endpoint_id}")


@endpoints_app.command("disable")
def endpoints_disable(
    endpoint_id: Annotated[str, typer.Argument(metavar="ID")], config: ConfigOption = None
) -> None:
    """Disable an endpoint: it gets no new deliveries; pending ones are parked."""
    if _run(config, lambda ds, _: ds.update_endpoint(endpoint_id, {"disabled": True})) is None:
        raise _fail(f"no endpoint with id {endpoint_id!r}")
    _out.print(f"disabled {endpoint_id}")


@endpoints_app.command("delete")
def endpoints_delete(
    endpoint_id: Annotated[str, typer.Argument(metavar="ID")], config: ConfigOption = None
) -> None:
    """Delete an endpoint with its deliveries and their attempts."""
    if not _run(config, lambda ds, _: ds.delete_endpoint(endpoint_id)):
        raise _fail(f"no endpoint with id {endpoint_id!r}")
    _out.print(f"deleted {endpoint_id}")


@endpoints_app.command("rotate-secret")
def endpoints_rotate(
    endpoint_id: Annotated[str, typer.Argument(metavar="ID")],
    overlap: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=MAX_OVERLAP_SECONDS,
            help="Seconds the old secret still signs (default 24 h, at most 30 days).",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Give an endpoint a new secret; print it (shown this once)."""

    async def rotate(ds: DeliveryStore, settings: Any) -> Any:
        gap = settings.delivery.rotation_overlap_seconds if overlap is None else overlap
        return await ds.rotate_secret(endpoint_id, gap)

    rotation = _run(config, rotate)
    if rotation is None:
        raise _fail(f"no endpoint with id {endpoint_id!r}")
    if rotation.refused_until is not None:
        raise _fail(
            "the secret before the current one still signs until "
            f"{_when(rotation.refused_until)}, and a rotation now would cut it off early; "
            "rotate after that time, or with --overlap 0 to stop every old secret at once"
        )
    ep = rotation.endpoint
    _out.print(f"secret: {ep.secret}")
    _out.print(f"old secret signs until: {_when(ep.previous_secret_expires_at) or 'no longer'}")


@endpoints_app.command("recover")
def endpoints_recover(
    endpoint_id: Annotated[str, typer.Argument(metavar="ID")],
    since: Annotated[datetime, typer.Option(help="Resend failed deliveries created since.")],
    config: ConfigOption = None,
) -> None:
    """Resend every failed delivery of the endpoint created since ``--since``."""

    async def recover(ds: DeliveryStore, _: Any) -> int | str:
        ep = await ds.get_endpoint(endpoint_id)
        if ep is None:
            return f"no endpoint with id {endpoint_id!r}"
        if ep.disabled:
            return _disabled(endpoint_id, "recover")
        return await ds.recover(endpoint_id, since)

    count = _run(config, recover)
    if isinstance(count, str):
        raise _fail(count)
    _out.print(f"requeued {count} deliveries")


def _disabled(endpoint_id: str, what: str) -> str:
    return (
        f"endpoint {endpoint_id!r} is disabled, so nothing would be sent; enable it first "
        f"(eventmill endpoints enable {endpoint_id}), then {what}"
    )


@deliveries_app.command("list")
def deliveries_list(
    endpoint_id: Annotated[str | None, typer.Option("--endpoint")] = None,
    event_id: Annotated[str | None, typer.Option("--event")] = None,
    user_id: Annotated[str | None, typer.Option("--user-id", "-u")] = None,
    status: Annotated[str | None, typer.Option(help="pending, succeeded or failed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List deliveries, newest first."""
    if status not in (None, "pending", "succeeded", "failed"):
        raise _fail("--status must be pending, succeeded or failed", 2)
    wanted: Status | None = status  # type: ignore[assignment]
    page = _run(
        config,
        lambda ds, _: ds.list_deliveries(
            endpoint_id=endpoint_id, event_id=event_id, user_id=user_id, status=wanted, limit=limit
        ),
    )
    if as_json:  # the API's shape (GET /v1/deliveries), one delivery per line
        for d in page.items:
            print(DeliveryOut.of(d).model_dump_json())
        return
    table = Table("id", "event", "endpoint", "status", "attempts", "last code", "last error")
    for d in page.items:
        table.add_row(
            d.id,
            d.event_id,
            d.endpoint_id,
            d.status,
            str(d.attempts),
            str(d.last_status_code or ""),
            escape(d.last_error or ""),
        )
    _out.print(table)


@deliveries_app.command("show")
def deliveries_show(
    delivery_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show a delivery and its attempts."""

    async def show(ds: DeliveryStore, _: Any) -> Any:
        d = await ds.get_delivery(delivery_id)
        return None if d is None else (d, await ds.attempts_of(delivery_id))

    found = _run(config, show)
    if found is None:
        raise _fail(f"no delivery with id {delivery_id!r}")
    d, attempts = found
    if as_json:  # the API's shape (GET /v1/deliveries/{id}), on one line
        print(DeliveryDetailOut.with_attempts(d, attempts).model_dump_json())
        return
    _out.print(f"{d.id}: {d.status}, {d.attempts} attempt(s); event {d.event_id} → {d.endpoint_id}")
    table = Table("#", "at", "code", "ms", "outcome", "error / body")
    for a in attempts:
        detail = a.error or (a.response_body or "")[:80]
        table.add_row(
            str(a.attempt),
            _when(a.started_at),
            str(a.status_code or ""),
            f"{a.latency_ms:.0f}" if a.latency_ms is not None else "",
            a.outcome,
            escape(detail),
        )
    _out.print(table)


@deliveries_app.command("retry")
def deliveries_retry(
    delivery_id: Annotated[str, typer.Argument(metavar="ID")], config: ConfigOption = None
) -> None:
    """Make a delivery due again at once (a new round of the schedule)."""
    retried = _run(config, lambda ds, _: ds.retry_delivery(delivery_id))
    if retried is None:
        raise _fail(f"no delivery with id {delivery_id!r}")
    if retried.endpoint_disabled:
        raise _fail(_disabled(retried.delivery.endpoint_id, "retry"))
    if not retried.queued:
        raise _fail(
            f"delivery {delivery_id!r} is being sent right now; its outcome shows in "
            f"`eventmill deliveries show {delivery_id}` (retry after it, if it still needs one)"
        )
    _out.print(f"queued {delivery_id}")
