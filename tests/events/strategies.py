"""Hypothesis strategies for events (shared by events and store tests)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from eventmill.events import Event, EventMetadata

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
"""Any text without lone surrogates (not representable in UTF-8 JSON)."""

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)

event_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,30}", fullmatch=True)
sources = st.from_regex(r"[a-z0-9][a-z0-9_\-]{0,20}", fullmatch=True)
times = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)

metadata = st.builds(
    EventMetadata,
    version=st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
    correlation_id=_text,
    trace_id=_text,
    headers=st.dictionaries(_text, _text, max_size=3),
    retry_count=st.integers(min_value=0, max_value=2**31),
)

events = st.builds(
    Event,
    event_name=event_names,
    source=sources,
    user_id=st.none()
    | st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=30),
    payload=json_values,
    metadata=metadata,
    created_at=times,
    processed_at=st.none() | times,
)
