"""``eventmill config show`` and ``eventmill config check``.

``show`` prints every effective setting with where its value came from (``default``,
``env NAME``, ``file PATH``, ``argument``), secrets masked and URL passwords redacted.
``check`` loads the settings and then checks what loading alone cannot see — that the
bus and store URLs name a known backend with valid options, that the JWT key loads,
that payload builders import, that webhook sources' secrets make a receiver, that the
data directory can be made — and exits 2 naming the setting and what is wrong
(``serve`` checks the same before it starts).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import AliasChoices, BaseModel, SecretStr
from rich.markup import escape
from rich.table import Table

from eventmill.cli._common import ConfigOption, app, error, fail, load_settings, out
from eventmill.settings import Settings

config_app = typer.Typer(help="Show and check the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

_MASK = "**********"
_ENV_PREFIX = "EVENTMILL_"


def _env_names(path: tuple[str, ...], alias: Any) -> list[str]:
    names = [_ENV_PREFIX + "__".join(path).upper()]
    if len(path) == 1 and isinstance(alias, AliasChoices):
        names += [c.upper() for c in alias.choices if isinstance(c, str)]
    return names


def _file_values(config: Path | None) -> tuple[str | None, dict[str, Any]]:
    path = config if config is not None else os.environ.get("EVENTMILL_CONFIG")
    if not path:
        return None, {}
    try:
        return str(path), tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return str(path), {}


def _in_file(data: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _shown(value: Any) -> str:
    from eventmill.pubsub.factory import redact_url

    if isinstance(value, SecretStr):
        return _MASK
    if isinstance(value, list) and value and all(isinstance(v, SecretStr) for v in value):
        return ", ".join(_MASK for _ in value)
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    if isinstance(value, dict):
        return ", ".join(sorted(value)) or "{}"
    return "" if value is None else str(value)


def rows(settings: Settings, config: Path | None = None) -> Iterator[tuple[str, str, str]]:
    """``(setting, shown value, origin)`` for every setting, nested ones dotted."""
    file_name, file_data = _file_values(config)
    environ = {k.upper() for k in os.environ}

    def walk(model: BaseModel, prefix: tuple[str, ...]) -> Iterator[tuple[str, str, str]]:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            path = (*prefix, name)
            nested = isinstance(value, BaseModel) and not prefix and name != "sources"
            if nested:
                yield from walk(value, path)
                continue
            origin = "default"
            names = _env_names(path, field.validation_alias)
            whole = _ENV_PREFIX + path[0].upper() if len(path) > 1 else None
            if name in model.model_fields_set:
                found = [n for n in names if n in environ]
                if found:
                    origin = f"env {found[0]}"
                elif whole is not None and whole in environ:
                    origin = f"env {whole}"
                elif file_name is not None and _in_file(file_data, path):
                    origin = f"file {file_name}"
                else:
                    origin = "argument" if not prefix else "default"
            yield ".".join(path), _shown(value), origin

    yield ("bus (effective)", _shown(settings.bus), "derived")
    yield ("store (effective)", _shown(settings.store), "derived")
    yield from walk(settings, ())


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration: every setting, its value and where it came
    from; secrets masked, URL passwords redacted."""
    settings = load_settings(config)
    table = Table("setting", "value", "from")
    for name, value, origin in rows(settings, config):
        table.add_row(name, escape(value), origin)
    out.print(table)


def problems(settings: Settings) -> Iterator[tuple[str, str]]:
    """``(setting, what is wrong)`` for what loading the settings does not check."""
    from eventmill.errors import ConfigurationError
    from eventmill.pubsub.factory import backend_class
    from eventmill.store import StoreConfig

    try:
        backend_class(settings.bus).from_url(settings.bus)
    except ConfigurationError as exc:
        yield "bus_url", str(exc)
    try:
        StoreConfig.from_url(settings.store)
    except ConfigurationError as exc:
        yield "store_url", str(exc)
    if settings.jwt.configured:
        from eventmill.web.tokens import JwtVerifier

        try:
            JwtVerifier(settings.jwt)
        except ConfigurationError as exc:
            yield "jwt", str(exc)
    from eventmill.delivery.builders import load_builder

    for pattern, target in settings.delivery.builders.items():
        try:
            load_builder(target)
        except ConfigurationError as exc:
            yield f"delivery.builders[{pattern!r}]", str(exc)
    from eventmill.ingest import receiver_for
    from eventmill.ingest.signatures import RazorpayScheme

    for name, source in settings.sources.items():
        try:
            receiver_for(source)
        except ConfigurationError as exc:
            yield f"sources.{name}", str(exc)
    if settings.razorpay_webhook_secret:
        try:
            RazorpayScheme([s.get_secret_value() for s in settings.razorpay_webhook_secret])
        except ConfigurationError as exc:
            yield "razorpay_webhook_secret", str(exc)
    if settings.uses_data_dir():
        problem = _data_dir_problem(settings.data_dir)
        if problem is not None:
            yield "data_dir", problem


def _data_dir_problem(data_dir: Path) -> str | None:
    """Why the embedded databases' directory cannot be used or created, if it is known
    without creating it (``serve`` says so too when creating it fails)."""
    path = data_dir.absolute()
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as exc:
        return f"{path} cannot be looked at: {exc.strerror or exc}"
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path:
            return f"{existing} is not writable"
        return f"cannot create {path}: {existing} is not writable"
    return None


def refuse_problems(settings: Settings) -> None:
    """Exit 2 with ``error: <setting>: <what is wrong>`` (one line each) if
    :func:`problems` finds any: ``serve`` checks so before it starts."""
    found = list(problems(settings))
    for name, message in found:
        error(f"{name}: {message}")
    if found:
        raise typer.Exit(2)


@config_app.command("check")
def config_check(
    config: ConfigOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing when valid.")] = False,
) -> None:
    """Check the configuration: exit 0 when it is valid, else 2 with each setting's
    name and what is wrong with it (never a secret's value)."""
    settings = load_settings(config)
    found = list(problems(settings))
    if found:
        for name, message in found:
            out.print(f"{name}: {escape(message)}", soft_wrap=True, highlight=False)
        raise fail(f"{len(found)} setting(s) are not valid", 2)
    if not quiet:
        out.print("configuration is valid", highlight=False)
