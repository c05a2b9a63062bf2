"""URL options: one typed parser for the query string of every backend's URL.

A backend's settings are a frozen dataclass; a URL option sets the field of the same
name, its text read by the field's annotated type:

=============================  ===========================================================
type                           accepted text
=============================  ===========================================================
``int``                        an integer: ``500``
``float``                      a finite number: ``0.5``
:data:`Seconds`                a duration: seconds (``30``, ``0.5``) or with a unit
                               (``500ms``, ``30s``, ``5m``, ``2h``, ``7d``)
``bool``                       ``true``/``false`` (also ``yes``/``no``, ``1``/``0``)
``str``                        the text as given
``Literal["a", "b"]``          one of the values, in any case
``X | None``                   as ``X``, or :data:`UNLIMITED` (``unlimited``): no limit
=============================  ===========================================================

An unknown option, or a value its type does not accept, raises
:class:`~eventmill.ConfigurationError` naming the option and what it expects; the
dataclass's ``__post_init__`` then checks ranges (:func:`apply_options` builds the
result with :func:`dataclasses.replace`, which runs it). An option repeated in a URL
takes its last value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from collections.abc import Callable, Collection, Iterable
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Final,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)
from urllib.parse import parse_qsl

from eventmill.errors import ConfigurationError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "MAX_UNSETTLED",
    "RENAMED",
    "STALL_WARNING",
    "UNLIMITED",
    "Seconds",
    "apply_options",
    "check_unsettled",
    "split_query",
]

UNLIMITED: Final = "unlimited"
"""The one word, on every backend, for "no limit": ``retention=unlimited``, ``maxlen=unlimited``."""


class _Unit:
    __slots__ = ()


_SECONDS: Final = _Unit()

Seconds = Annotated[float, _SECONDS]
"""A duration in seconds; in a URL also ``500ms``, ``30s``, ``5m``, ``2h``, ``7d``."""

MAX_UNSETTLED: Final = 1000
"""Default of every backend's ``max_unsettled``: the messages one subscription hands out
and holds unsettled before it hands out no more."""

STALL_WARNING: Final = 30.0
"""Default of every backend's ``stall_warning``: seconds a subscription may be held at
``max_unsettled`` before it logs one warning."""

#: Options of earlier versions, and what they are called now.
RENAMED: Final = {
    "backoff_max": "reconnect_max_delay",
    "max_ack_pending": "max_unsettled",
    "max_in_flight": "max_unsettled",
    "reconnect_backoff_max": "reconnect_max_delay",
    "reconnect_backoff_min": "reconnect_min_delay",
    "reconnect_max_wait": "reconnect_max_delay",
    "reconnect_wait": "reconnect_min_delay",
}

_UNITS: Final = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0))
_TRUE: Final = frozenset({"true", "yes", "1"})
_FALSE: Final = frozenset({"false", "no", "0"})

C = TypeVar("C", bound="DataclassInstance")


class _BadValueError(ValueError):
    pass


def split_query(
    query: str, passthrough: Collection[str] = ()
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split a URL's query into eventmill's options and those in ``passthrough`` (left,
    in order, for the client library: TLS files, libpq settings...)."""
    ours: list[tuple[str, str]] = []
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        (theirs if key in passthrough else ours).append((key, value))
    return ours, theirs


def apply_options(
    config: C,
    options: Iterable[tuple[str, str]],
    *,
    scheme: str,
    fixed: Collection[str] = (),
) -> C:
    """Return ``config`` (a dataclass instance) with ``options`` set, each read by its
    field's type (see the module docstring). ``fixed`` names fields a URL sets otherwise
    (its host, path or credentials), which are no options."""
    parsers = _parsers(type(config))
    changes: dict[str, object] = {}
    for name, raw in options:
        parser = parsers.get(name) if name not in fixed else None
        if parser is None:
            raise ConfigurationError(_unknown(scheme, name, parsers.keys() - set(fixed)))
        parse, expected = parser
        try:
            changes[name] = parse(raw)
        except (_BadValueError, ValueError):
            raise ConfigurationError(
                f"{scheme} option {name} must be {expected}, not {raw!r}"
            ) from None
    if not changes:
        return config
    return dataclasses.replace(config, **changes)


def check_unsettled(scheme: str, max_unsettled: int | None, stall_warning: float | None) -> None:
    """Raise :class:`~eventmill.ConfigurationError` unless ``max_unsettled`` is at least 1
    (or ``None``: no bound) and ``stall_warning`` a positive number of seconds (or ``None``:
    never warn); every backend's config checks its two fields with this."""
    if max_unsettled is not None and (
        isinstance(max_unsettled, bool) or not isinstance(max_unsettled, int) or max_unsettled < 1
    ):
        raise ConfigurationError(f"{scheme} max_unsettled must be at least 1 (or unlimited)")
    if stall_warning is not None and not (
        isinstance(stall_warning, int | float)
        and math.isfinite(stall_warning)
        and stall_warning > 0
    ):
        raise ConfigurationError(
            f"{scheme} stall_warning must be a positive number of seconds (or unlimited)"
        )


def _unknown(scheme: str, name: str, known: Collection[str]) -> str:
    new = RENAMED.get(name)
    if new is not None and new in known:
        return f"unknown {scheme} option {name!r}: it is now called {new}"
    return f"unknown {scheme} option {name!r} (known: {', '.join(sorted(known))})"


Parser = tuple[Callable[[str], object], str]


@functools.cache
def _parsers(cls: type[DataclassInstance]) -> dict[str, Parser]:
    hints = get_type_hints(cls, include_extras=True)
    return {f.name: _parser_for(hints[f.name]) for f in dataclasses.fields(cls)}


def _parser_for(hint: Any) -> Parser:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == 2:
            inner, expected = _parser_for(args[0])

            def optional(raw: str) -> object:
                return None if raw.strip().lower() == UNLIMITED else inner(raw)

            return optional, f"{expected} or {UNLIMITED!r}"
    if origin is Annotated:
        base, *meta = get_args(hint)
        if _SECONDS in meta:
            return _seconds, "a duration in seconds (e.g. 30, 0.5, 500ms, 5m, 2h)"
        return _parser_for(base)
    if origin is Literal:
        values = [str(v) for v in get_args(hint)]
        return functools.partial(_choice, values), "one of " + ", ".join(map(repr, values))
    if hint is bool:
        return _bool, "true or false"
    if hint is int:
        return _int, "an integer"
    if hint is float:
        return _float, "a number"
    if hint is str:
        return str, "text"
    return _unsupported, "settable in code only"


def _int(raw: str) -> int:
    return int(raw.strip())


def _float(raw: str) -> float:
    value = float(raw.strip())
    if not math.isfinite(value):
        raise _BadValueError(raw)
    return value


def _seconds(raw: str) -> float:
    text = raw.strip().lower()
    for suffix, factor in _UNITS:
        if text.endswith(suffix) and text[: -len(suffix)].strip():
            head = text[: -len(suffix)].strip()
            if head[-1].isdigit() or head[-1] == ".":
                return _float(head) * factor
    return _float(text)


def _bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _BadValueError(raw)


def _choice(values: list[str], raw: str) -> str:
    text = raw.strip().lower()
    for value in values:
        if value.lower() == text:
            return value
    raise _BadValueError(raw)


def _unsupported(raw: str) -> object:
    raise _BadValueError(raw)
