"""``eventmill keys …``: create, list and revoke API keys."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
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
    run,
)

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _scopes_ok(scopes: list[str]) -> list[str]:
    from eventmill.store import SCOPES

    bad = sorted(set(scopes) - set(SCOPES))
    if bad:
        raise fail(f"unknown scope(s) {', '.join(bad)}; use {', '.join(sorted(SCOPES))}", 2)
    return scopes


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label for the key (who uses it).")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", help="Scope to grant: publish, read, admin (repeatable)."),
    ],
    config: ConfigOption = None,
) -> None:
    """Create an API key. The secret is printed once and never stored in clear."""
    from eventmill.errors import ConfigurationError
    from eventmill.store.api_keys import check_key_name

    settings = load_settings(config)
    try:
        check_key_name(name)
    except ConfigurationError as exc:
        raise fail(str(exc), 2) from None
    scopes = _scopes_ok(scope)

    async def create() -> tuple[str, str]:
        async with open_store(settings, create=True) as store:
            record, plaintext = await store.api_keys.create(name, set(scopes))
            return record.id, plaintext

    key_id, secret = run(create)
    out.print(f"id:     {key_id}")
    out.print(f"scopes: {', '.join(scopes)}")
    out.print(f"key:    {secret}", soft_wrap=True)  # one line, whatever the width
    err.print("Store the key now: it cannot be shown again.")


@keys_app.command("list")
def keys_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List API keys (never their secrets)."""
    settings = load_settings(config)

    async def listing() -> list[Any]:
        async with open_store(settings, create=False) as store:
            return list(await store.api_keys.list())

    rows = run(listing)
    if as_json:
        for key in rows:
            record = {
                "id": key.id,
                "name": key.name,
                "scopes": sorted(key.scopes),
                "created_at": key.created_at,
                "revoked_at": key.revoked_at,
            }
            print(orjson.dumps(record, option=orjson.OPT_UTC_Z).decode())
        return
    table = Table("id", "name", "scopes", "created", "revoked")
    for key in rows:
        table.add_row(
            key.id,
            escape(key.name),
            ",".join(sorted(key.scopes)),
            key.created_at.isoformat(timespec="seconds"),
            key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (from keys list).")],
    config: ConfigOption = None,
) -> None:
    """Revoke an API key: requests using it are refused with 401 from now on."""
    settings = load_settings(config)

    async def revoke() -> bool:
        async with open_store(settings, create=False) as store:
            return bool(await store.api_keys.revoke(key_id))

    if not run(revoke):
        raise fail(f"no active key with id {key_id!r}")
    out.print(f"revoked {key_id}")
