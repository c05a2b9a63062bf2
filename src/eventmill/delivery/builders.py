"""Payload builders: what is sent for an event (the system description's
PayloadBuilderFactory).

A builder is a callable ``Event -> dict | bytes`` (a dict is sent as JSON). Builders
are keyed on event-name patterns (``razorpay.payment.*``) with the event registry's
precedence: an exact name first, then the pattern with the most literal characters,
then the one registered first. An event no builder matches is sent as its envelope
JSON, unchanged. Builders come from code (:func:`payload_builder`, or
:meth:`PayloadBuilders.register`) and from configuration
(``delivery.builders = {"pattern": "module:function"}``, which wins over code for
the same pattern). A builder runs on the event loop when an attempt is prepared:
keep it quick. If it raises, that delivery is parked as failed with the error.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

from eventmill.errors import ConfigurationError
from eventmill.events import Event
from eventmill.events.registry import compile_pattern, validate_pattern

__all__ = ["Builder", "BuilderError", "PayloadBuilders", "payload_builder", "registered_builders"]

Builder = Callable[[Event], "dict[str, Any] | bytes"]
"""Builds the body sent for an event: a dict (sent as JSON) or bytes (sent as is)."""

_CACHE_LIMIT: Final = 4096


class BuilderError(Exception):
    """A payload builder raised or returned something that cannot be sent."""


class PayloadBuilders:
    """Event-name pattern → builder."""

    def __init__(self) -> None:
        self._exact: dict[str, tuple[str, Builder]] = {}
        self._patterns: list[tuple[int, int, str, re.Pattern[str], Builder]] = []
        self._cache: dict[str, tuple[str, Builder] | None] = {}

    def register(self, pattern: str, builder: Builder, *, replace: bool = False) -> None:
        """Use ``builder`` for events whose name matches ``pattern``.

        Raises :class:`~eventmill.ConfigurationError` for a bad pattern, a builder that
        is not callable, or a pattern already registered (unless ``replace``).
        """
        validate_pattern(pattern)
        if not callable(builder):
            raise ConfigurationError(f"payload builder for {pattern!r} is not callable")
        known = pattern in self._exact or any(p[2] == pattern for p in self._patterns)
        if known and not replace:
            raise ConfigurationError(f"a payload builder for {pattern!r} is already registered")
        self._exact.pop(pattern, None)
        self._patterns = [p for p in self._patterns if p[2] != pattern]
        if "*" not in pattern:
            self._exact[pattern] = (pattern, builder)
        else:
            literal = len(pattern) - pattern.count("*")
            entry = (-literal, len(self._patterns), pattern, compile_pattern(pattern), builder)
            self._patterns.append(entry)
            self._patterns.sort(key=lambda p: (p[0], p[1]))
        self._cache.clear()

    def copy(self) -> PayloadBuilders:
        """An independent copy (the feature copies the code-registered builders)."""
        other = PayloadBuilders()
        other._exact = dict(self._exact)
        other._patterns = list(self._patterns)
        return other

    def lookup(self, event_name: str) -> tuple[str, Builder] | None:
        """The ``(pattern, builder)`` for ``event_name``, or ``None`` (send the envelope)."""
        try:
            return self._cache[event_name]
        except KeyError:
            pass
        found = self._exact.get(event_name)
        if found is None:
            for _, _, pattern, regex, builder in self._patterns:
                if regex.fullmatch(event_name):
                    found = (pattern, builder)
                    break
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[event_name] = found
        return found

    def build(self, event_name: str, envelope: bytes) -> bytes:
        """The body to send for an event, given its envelope JSON.

        Raises :class:`BuilderError` naming the builder when it raises or returns
        neither a dict nor bytes.
        """
        found = self.lookup(event_name)
        if found is None:
            return envelope
        pattern, builder = found
        try:
            result = builder(Event.from_json(envelope))
            if isinstance(result, bytes | bytearray | memoryview):
                return bytes(result)
            if isinstance(result, Mapping):
                return orjson.dumps(result, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)
        except Exception as exc:
            name = getattr(builder, "__qualname__", type(builder).__name__)
            text = f"payload builder {name} ({pattern}) failed: {type(exc).__name__}: {exc}"
            raise BuilderError(text[:900]) from exc
        raise BuilderError(
            f"payload builder for {pattern} returned {type(result).__name__}, not a dict or bytes"
        )


_REGISTERED = PayloadBuilders()


def registered_builders() -> PayloadBuilders:
    """The builders registered in code with :func:`payload_builder` (process-wide)."""
    return _REGISTERED


def payload_builder(pattern: str) -> Callable[[Builder], Builder]:
    """Decorator: register the function as the payload builder for ``pattern``::

    @payload_builder("razorpay.payment.*")
    def payment(event: Event) -> dict[str, Any]:
        return {"type": event.event_name, "amount": event.payload["amount"]}
    """

    def decorate(func: Builder) -> Builder:
        _REGISTERED.register(pattern, func)
        return func

    return decorate


def load_builder(target: str) -> Builder:
    """Import ``module:function`` (raises :class:`~eventmill.ConfigurationError`)."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"payload builder {target!r}: cannot import {exc.name}") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigurationError(f"payload builder {target!r}: no attribute {attr!r}")
    if not callable(obj):
        raise ConfigurationError(f"payload builder {target!r} is not callable")
    func: Builder = obj
    return func


def builders_from(config: Mapping[str, str]) -> PayloadBuilders:
    """The code-registered builders plus those named in configuration (which win)."""
    table = _REGISTERED.copy()
    for pattern, target in config.items():
        table.register(pattern, load_builder(target), replace=True)
    return table
