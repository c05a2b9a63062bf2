"""What every ``eventmill`` command shares: the app, consoles, settings, the store.

Every command reads the same settings as the service (``EVENTMILL_*`` variables, or
the TOML file given with ``--config`` / ``$EVENTMILL_CONFIG``); see
:class:`eventmill.settings.Settings`. Every command that opens the store says which
one on stderr (``store: sqlite+aiosqlite:////…/events.db``); a command that only reads
never creates an embedded store that is not there. Errors are one line on stderr,
``error: …``, with exit status 1 (2 for bad arguments or settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from eventmill.errors import ConfigurationError, EventmillError
from eventmill.settings import Settings

__all__ = [
    "ConfigOption",
    "JsonOption",
    "app",
    "command_name",
    "err",
    "error",
    "fail",
    "load_settings",
    "make_data_dir",
    "note_store",
    "open_store",
    "out",
    "run",
    "when",
]

T = TypeVar("T")

app = typer.Typer(
    name="eventmill",
    help="eventmill: webhook and event gateway built on the eventmill library.",
    no_args_is_help=True,
    add_completion=False,
)

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (else $EVENTMILL_CONFIG)."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="JSON instead of a table: one object per line.")
]


def error(text: str) -> None:
    """Print ``error: text`` on stderr: unwrapped (a path stays copyable) and with any
    ``[...]`` in it shown as is, not read as markup."""
    err.print(f"[red]error:[/red] {escape(text)}", soft_wrap=True)


def fail(text: str, code: int = 1) -> typer.Exit:
    """Print ``error: text`` and return the exit to raise."""
    error(text)
    return typer.Exit(code)


def load_settings(config: Path | None, **overrides: Any) -> Settings:
    """The settings (overrides that are ``None`` are left out); exit 2 when invalid."""
    try:
        return Settings.load(config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigurationError as exc:
        raise fail(str(exc), 2) from None


def make_data_dir(settings: Settings) -> None:
    """Create :attr:`~Settings.data_dir` when an embedded database lives there; exit 2
    naming the setting when it cannot be."""
    if not settings.uses_data_dir():
        return
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(
            f"data_dir: cannot create {settings.data_dir.absolute()}: {exc.strerror or exc}", 2
        ) from None


def command_name() -> str:
    """How the user can run this ``eventmill``: plain ``eventmill`` when that is the one
    on the PATH, else the path it was started by (``.venv/bin/eventmill``)."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started is None or started.name != "eventmill":
        return "eventmill"
    on_path = shutil.which("eventmill")
    if on_path is not None and Path(on_path).resolve() == started.resolve():
        return "eventmill"
    if started.is_absolute():
        try:
            relative = os.path.relpath(started)
        except ValueError:  # pragma: no cover - another drive (Windows)
            return str(started)
        return str(started) if relative.startswith("..") else relative
    return str(started)


def note_store(settings: Settings, *, create: bool) -> None:
    """Say on stderr which store the command opens; unless ``create``, stop (exit 1)
    when its embedded SQLite file does not exist rather than create an empty one."""
    from eventmill.app import display_url
    from eventmill.store import StoreConfig

    shown = display_url(settings.store)
    err.print(f"store: {escape(shown)}", soft_wrap=True, highlight=False)
    if create:
        return
    try:
        config = StoreConfig.from_url(settings.store)
    except ConfigurationError as exc:
        raise fail(str(exc), 2) from None
    if config.dialect != "sqlite" or config.memory:
        return
    path = Path(config.url.split(":///", 1)[1].split("?", 1)[0]).absolute()
    if not path.is_file():
        raise fail(
            f"no store at {path}: nothing to read. Run this from the directory "
            "'eventmill serve' runs in, or set EVENTMILL_STORE_URL (or EVENTMILL_DATA_DIR) "
            "to the store it uses"
        )


@contextlib.asynccontextmanager
async def open_store(settings: Settings, *, create: bool) -> AsyncIterator[Any]:
    """Open (and migrate) the store named by ``settings``; say which on stderr first.
    ``create=False``: a missing embedded store is an error, not created."""
    from eventmill.store import open_store as open_

    note_store(settings, create=create)
    if create:
        make_data_dir(settings)
    store = await open_(settings.store)
    try:
        yield store
    finally:
        await store.close()


def run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; an eventmill error is one line on stderr and exit status 1."""
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except EventmillError as exc:
        raise fail(str(exc)) from None


def when(value: datetime | None) -> str:
    """A time as the CLI prints it (seconds, ISO 8601), or ``""``."""
    return value.isoformat(timespec="seconds") if value else ""
