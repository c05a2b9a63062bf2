"""The ``eventmill`` command: ``serve`` the gateway, manage API ``keys``.

Every command reads the same settings as the service (``EVENTMILL_*`` variables, or
the TOML file given with ``--config`` / ``$EVENTMILL_CONFIG``); see
:class:`eventmill.settings.Settings`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from eventmill.delivery.cli import deliveries_app, endpoints_app
from eventmill.errors import ConfigurationError, EventmillError
from eventmill.settings import Settings

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="eventmill",
    help="eventmill: webhook and event gateway built on the eventmill library.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(deliveries_app, name="deliveries")

_out = Console()
_err = Console(stderr=True)


def _error(text: str) -> None:
    """Print ``error: text`` on stderr: unwrapped (a path stays copyable) and with any
    ``[...]`` in it shown as is, not read as markup."""
    _err.print(f"[red]error:[/red] {escape(text)}", soft_wrap=True)


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (else $EVENTMILL_CONFIG)."),
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return Settings.load(config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigurationError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except EventmillError as exc:
        _error(str(exc))
        raise typer.Exit(1) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 8080).")] = None,
    config: ConfigOption = None,
) -> None:
    """Run the gateway (HTTP API, webhook receivers, outbox relay, audit handler)."""
    import uvicorn

    from eventmill.app import create_app

    settings = _settings(config, host=host, port=port)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic narrates every plugin it loads at INFO; only its problems matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
    uvicorn.run(
        create_app(settings, freeze_gc=True),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=30,
    )


def _scopes_ok(scopes: list[str]) -> list[str]:
    from eventmill.store import SCOPES

    bad = sorted(set(scopes) - set(SCOPES))
    if bad:
        _error(f"unknown scope(s) {', '.join(bad)}; use {', '.join(sorted(SCOPES))}")
        raise typer.Exit(2)
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
    from eventmill.app import open_key_store

    settings = _settings(config)
    scopes = _scopes_ok(scope)

    async def create() -> tuple[str, str]:
        async with open_key_store(settings) as keys:
            record, plaintext = await keys.create(name, set(scopes))
            return record.id, plaintext

    key_id, secret = _run(create)
    _out.print(f"id:     {key_id}")
    _out.print(f"scopes: {', '.join(scopes)}")
    _out.print(f"key:    {secret}", soft_wrap=True)  # one line, whatever the width
    _err.print("Store the key now: it cannot be shown again.")


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """List API keys (never their secrets)."""
    from eventmill.app import open_key_store

    settings = _settings(config)

    async def listing() -> list[Any]:
        async with open_key_store(settings) as keys:
            return list(await keys.list())

    rows = _run(listing)
    table = Table("id", "name", "scopes", "created", "revoked")
    for key in rows:
        table.add_row(
            key.id,
            key.name,
            ",".join(sorted(key.scopes)),
            key.created_at.isoformat(timespec="seconds"),
            key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
        )
    _out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (from keys list).")],
    config: ConfigOption = None,
) -> None:
    """Revoke an API key: requests using it are refused with 401 from now on."""
    from eventmill.app import open_key_store

    settings = _settings(config)

    async def revoke() -> bool:
        async with open_key_store(settings) as keys:
            return bool(await keys.revoke(key_id))

    if not _run(revoke):
        _error(f"no active key with id {key_id!r}")
        raise typer.Exit(1)
    _out.print(f"revoked {key_id}")


def main() -> None:
    """Entry point of the ``eventmill`` console script."""
    app()
