"""The operator's event tools: ``publish``, ``tail``, ``events list/show/replay``,
``trace`` and ``migrate`` — run against the store and the bus directly."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from eventmill.cli._common import (
    ConfigOption,
    JsonOption,
    app,
    err,
    fail,
    load_settings,
    make_data_dir,
    open_store,
    out,
    run,
    when,
)
from eventmill.errors import ConfigurationError
from eventmill.settings import Settings

events_app = typer.Typer(help="List, show and replay stored events.", no_args_is_help=True)
app.add_typer(events_app, name="events")

UserOption = Annotated[str | None, typer.Option("--user-id", "-u", help="Only this user's.")]
NameOption = Annotated[
    str | None, typer.Option("--event-name", "-n", help="Exact name or pattern with '*'.")
]
SourceOption = Annotated[str | None, typer.Option("--source", "-s", help="Only this source.")]
SinceOption = Annotated[
    datetime | None, typer.Option(help="Only events created at or after (ISO 8601).")
]
UntilOption = Annotated[datetime | None, typer.Option(help="Only events created before.")]


def _in_utc(option: str, value: datetime | None) -> datetime | None:
    """A ``--since``/``--until`` time in UTC; exit 2 when it is outside the years
    1-9999 there (``0001-01-01T00:00:00+01:00``)."""
    from eventmill.events.envelope import to_utc

    if value is None:
        return None
    try:
        return to_utc(value)
    except ValueError as exc:
        raise fail(f"{option}: {exc}", 2) from None


def _line(stored: Any) -> str:
    data = stored.event.to_dict()
    data.update(position=stored.position, stored_at=stored.stored_at)
    return orjson.dumps(data, option=orjson.OPT_UTC_Z).decode()


def _table(rows: list[Any]) -> Table:
    table = Table("position", "id", "event", "user", "source", "created")
    for s in rows:
        e = s.event
        table.add_row(
            str(s.position),
            e.id,
            escape(e.event_name),
            escape(e.user_id or ""),
            e.source,
            when(e.created_at),
        )
    return table


@contextlib.asynccontextmanager
async def _bus(settings: Settings) -> AsyncIterator[Any]:
    from eventmill.app import display_url
    from eventmill.pubsub.factory import open_pubsub

    err.print(f"bus: {escape(display_url(settings.bus))}", soft_wrap=True, highlight=False)
    if settings.bus.startswith("sqlite:"):
        make_data_dir(settings)
    bus = await open_pubsub(settings.bus)
    try:
        yield bus
    finally:
        await bus.close()


@events_app.command("list")
def events_list(
    user_id: UserOption = None,
    event_name: NameOption = None,
    source: SourceOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many (1-1000).")] = 20,
    order: Annotated[
        str, typer.Option(help="'desc' newest first (default) or 'asc' oldest first.")
    ] = "desc",
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List stored events matching every filter given."""
    if order not in ("asc", "desc"):
        raise fail("--order must be asc or desc", 2)
    direction: Literal["asc", "desc"] = "asc" if order == "asc" else "desc"
    since, until = _in_utc("--since", since), _in_utc("--until", until)
    settings = load_settings(config)

    async def listing() -> list[Any]:
        async with open_store(settings, create=False) as store:
            page = await store.events.query(
                user_id=user_id,
                event_name=event_name,
                source=source,
                since=since,
                until=until,
                limit=limit,
                order=direction,
            )
            return list(page.events)

    rows = run(listing)
    if as_json:
        for stored in rows:
            print(_line(stored))
    else:
        out.print(_table(rows))


@events_app.command("show")
def events_show(
    event_id: Annotated[str, typer.Argument(metavar="ID", help="The event's id.")],
    config: ConfigOption = None,
) -> None:
    """Print one stored event as JSON."""
    settings = load_settings(config)

    async def show() -> Any:
        async with open_store(settings, create=False) as store:
            return await store.events.get(event_id)

    stored = run(show)
    if stored is None:
        raise fail(f"no event with id {event_id!r}")
    data = orjson.loads(_line(stored))
    data["published_at"] = when(stored.published_at) or None
    print(json.dumps(data, indent=2, ensure_ascii=False))


@events_app.command("replay")
def events_replay(
    topic: Annotated[str, typer.Option(help="Topic to publish to.")] = "events",
    after_position: Annotated[
        int, typer.Option(min=0, help="Only events stored after this position.")
    ] = 0,
    user_id: UserOption = None,
    event_name: NameOption = None,
    source: SourceOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Most events (default all).")] = None,
    config: ConfigOption = None,
) -> None:
    """Publish stored events again, oldest first, onto a topic: a new consumer catches
    up from the store. Each message keeps its event id, so consumers drop duplicates."""
    from eventmill.operations import replay

    since, until = _in_utc("--since", since), _in_utc("--until", until)
    settings = load_settings(config)

    async def go() -> Any:
        async with open_store(settings, create=False) as store, _bus(settings) as bus:
            with Progress(
                SpinnerColumn(),
                TextColumn("replayed {task.completed} event(s)"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as progress:
                task = progress.add_task("replay", total=None)
                return await replay(
                    store.events,
                    bus,
                    topic=topic,
                    after_position=after_position,
                    since=since,
                    until=until,
                    user_id=user_id,
                    event_name=event_name,
                    source=source,
                    limit=limit,
                    progress=lambda n: progress.update(task, completed=n),
                )

    result = run(go)
    out.print(f"replayed {result.published} event(s) onto {topic!r}", highlight=False)
    if result.last_position is not None:
        out.print(f"last position: {result.last_position}", highlight=False)
    if not result.complete:
        out.print(
            f"more match: continue with --after-position {result.last_position}", highlight=False
        )


@app.command()
def publish(
    event_name: Annotated[str, typer.Argument(help="The event's name, e.g. order.placed.")],
    payload: Annotated[str, typer.Option(help="The payload, as JSON.")] = "{}",
    user_id: Annotated[str | None, typer.Option("--user-id", "-u")] = None,
    source: Annotated[str, typer.Option(help="The event's source.")] = "internal",
    event_id: Annotated[
        str | None, typer.Option("--id", help="The event's id (deduplicated by it).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Store an event and publish it on topic 'events', on the service's durable path,
    checked as POST /v1/events checks it: the payload parsed under the API's limits, the
    event validated against the registry, a reserved source refused, an id already
    stored with another event refused (the same event again is a duplicate)."""
    from eventmill.errors import EventValidationError
    from eventmill.events import EventRegistry
    from eventmill.ingest import IngestContext, ingest, ingest_config
    from eventmill.ingest.api import refuse_other_content, validate_item
    from eventmill.web.body import MAX_JSON_DEPTH, parse_json
    from eventmill.web.errors import ApiError
    from eventmill.web.seam import EVENTS_TOPIC, Resources

    try:  # one level below the event object the API parses it in
        body = parse_json(payload.encode(), max_depth=MAX_JSON_DEPTH - 1, what="--payload")
    except ApiError as exc:
        raise fail(exc.message, 2) from None
    settings = load_settings(config)
    registry = EventRegistry.default(allow_unknown=settings.accept_unknown_events)
    resources = Resources(registry=registry, topic=EVENTS_TOPIC)
    try:
        ctx = IngestContext(config=ingest_config(settings, resources), resources=resources)
    except ConfigurationError as exc:
        raise fail(str(exc), 2) from None
    fields: dict[str, Any] = {"event_name": event_name, "source": source, "payload": body}
    if user_id is not None:
        fields["user_id"] = user_id
    if event_id is not None:
        fields["id"] = event_id
    try:
        event = validate_item(ctx, fields)
    except EventValidationError as exc:
        raise fail(f"invalid event: {exc}", 2) from None

    async def go() -> Any:
        async with open_store(settings, create=True) as store, _bus(settings) as bus:
            resources.store, resources.bus = store, bus
            [accepted] = await ingest(ctx, [(event, None)])
            # another event under a stored id is refused, as the API refuses it (409)
            refuse_other_content(
                [accepted.event if accepted.duplicate else None], [event], False, stored=True
            )
            return accepted

    accepted = run(go)
    print(json.dumps({"id": accepted.id, "duplicate": accepted.duplicate}))


@app.command()
def tail(
    topic: Annotated[
        str | None,
        typer.Option(help="Follow this bus topic live instead of the store (any message)."),
    ] = None,
    user_id: UserOption = None,
    event_name: NameOption = None,
    source: SourceOption = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Store: begin with the oldest event.")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.05, help="Store: seconds between reads.")] = 0.5,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many.")] = None,
    config: ConfigOption = None,
) -> None:
    """Follow new events (one JSON line each) until Ctrl-C: from the store, in store
    order, with filters; or, with --topic, every message published on a bus topic."""
    settings = load_settings(config)

    async def follow_store() -> None:
        seen = 0
        async with open_store(settings, create=False) as store:
            cursor: str | None = None
            if not from_start:
                last = await store.events.query(limit=1, order="desc")
                if last.events:
                    cursor = store.events.cursor_for(last.events[0].position)
            while count is None or seen < count:
                page = await store.events.query(
                    user_id=user_id,
                    event_name=event_name,
                    source=source,
                    after=cursor,
                    limit=100,
                )
                for stored in page.events:
                    print(_line(stored), flush=True)
                    seen += 1
                    if count is not None and seen >= count:
                        return
                cursor = page.next_cursor or cursor
                if not page.has_more:
                    await asyncio.sleep(interval)

    async def follow_topic(name: str) -> None:
        seen = 0
        async with _bus(settings) as bus:
            sub = await bus.subscribe(name)
            err.print(f"following topic {name!r} (new messages only)", highlight=False)
            async for msg in sub:
                msg.ack()
                md = msg.metadata
                if user_id is not None and md.get("user_id") != user_id:
                    continue
                if source is not None and md.get("source") != source:
                    continue
                try:
                    payload: Any = orjson.loads(msg.payload)
                except orjson.JSONDecodeError:
                    payload = msg.payload.decode(errors="replace")
                print(json.dumps({"id": msg.id, "metadata": md, "payload": payload}), flush=True)
                seen += 1
                if count is not None and seen >= count:
                    await sub.close()
                    return

    with contextlib.suppress(KeyboardInterrupt):
        if topic is not None:
            run(lambda: follow_topic(topic))
        else:
            run(follow_store)


@app.command()
def trace(
    event_id: Annotated[str, typer.Argument(metavar="ID", help="The event's id.")],
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Every hop of one event: stored, published, handled by which groups, delivered to
    which endpoints with which attempts, pushed to how many connections."""
    from eventmill.operations import trace as trace_of

    settings = load_settings(config)

    async def go() -> Any:
        async with open_store(settings, create=False) as store:
            return await trace_of(store, event_id)

    found = run(go)
    if found is None:
        raise fail(f"no event with id {event_id!r}")
    if as_json:
        for hop in found.hops:
            print(json.dumps({"at": when(hop.at), "hop": hop.hop, "detail": hop.detail}))
        return
    e = found.event.event
    out.print(
        f"{e.id}  {escape(e.event_name)}  user {escape(e.user_id or '-')}  "
        f"source {e.source}  position {found.event.position}",
        highlight=False,
    )
    table = Table("at", "hop", "detail")
    for hop in found.hops:
        detail = ", ".join(f"{k}={v}" for k, v in hop.detail.items() if v is not None)
        table.add_row(when(hop.at), hop.hop, escape(detail))
    out.print(table)


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Create or upgrade the store's tables to this version (safe to run from several
    processes at once; ``serve`` does it too on start)."""
    settings = load_settings(config)

    async def go() -> str:
        import sqlalchemy as sa

        from eventmill.store.database import VERSION_TABLE

        async with open_store(settings, create=True) as store:
            async with store.transaction(write=False) as conn:
                row = (
                    await conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))
                ).first()
            return str(row[0]) if row else "none"

    out.print(f"store schema at version {run(go)}", highlight=False)
