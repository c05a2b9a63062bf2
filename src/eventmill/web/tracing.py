"""W3C Trace Context (``traceparent``): taken from requests, carried with events, sent on.

A ``traceparent`` header reads ``00-<trace id: 32 hex>-<parent id: 16 hex>-<flags: 2 hex>``
(https://www.w3.org/TR/trace-context/). The service takes it from incoming requests
(or starts a new trace), carries it in each event's message metadata under
:data:`TRACEPARENT_KEY` through the bus, and sends it on outbound webhooks with a new
parent id (eventmill's own hop), so one trace id follows an event end to end. Invalid
headers are ignored, as the specification requires, and a new trace starts.

This is the whole of the format eventmill needs (parse, validate, new child); pulling
in OpenTelemetry's propagators for it would add a dependency tree for ~30 lines.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["TRACEPARENT_KEY", "TraceContext"]

TRACEPARENT_KEY: Final = "traceparent"
"""Message metadata key (and HTTP header) carrying the W3C ``traceparent``."""

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One position in a trace: the trace id, this hop's span id, and the flags."""

    trace_id: str
    """32 lowercase hex characters, never all zero."""
    span_id: str
    """16 lowercase hex characters, never all zero: the id of this hop."""
    flags: str = "01"
    """Trace flags (``01``: sampled)."""

    @classmethod
    def parse(cls, header: str | None) -> TraceContext | None:
        """The context a ``traceparent`` value names, or ``None`` if it is not valid."""
        if not header:
            return None
        match = _TRACEPARENT.fullmatch(header.strip().lower())
        if match is None:
            return None
        version, trace_id, parent_id, flags = match.groups()
        if version == "ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
            return None
        return cls(trace_id, parent_id, flags)

    @classmethod
    def new(cls) -> TraceContext:
        """A new trace (random ids), sampled."""
        return cls(os.urandom(16).hex(), os.urandom(8).hex())

    @classmethod
    def continue_from(cls, header: str | None) -> TraceContext:
        """A child of the context in ``header``, or a new trace when it is absent or invalid."""
        parent = cls.parse(header)
        return cls.new() if parent is None else parent.child()

    @classmethod
    def from_trace_id(cls, trace_id: str) -> TraceContext | None:
        """A new hop in trace ``trace_id`` (an event's ``metadata.trace_id``), or ``None``
        when it is not a W3C trace id (32 hex characters, not all zero)."""
        candidate = trace_id.lower()
        if _TRACE_ID.fullmatch(candidate) is None or candidate == _ZERO_TRACE:
            return None  # (it goes into a header: nothing but hex digits)
        return cls(candidate, os.urandom(8).hex())

    def child(self) -> TraceContext:
        """A new hop in the same trace."""
        return TraceContext(self.trace_id, os.urandom(8).hex(), self.flags)

    @property
    def header(self) -> str:
        """The ``traceparent`` value naming this hop as the parent."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"
