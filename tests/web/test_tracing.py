"""W3C traceparent: parsing per the specification, children, new traces."""

from __future__ import annotations

import pytest

from eventmill.web.tracing import TraceContext

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_header_is_parsed_and_continued_in_the_same_trace() -> None:
    parent = TraceContext.parse(VALID)
    assert parent == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    child = TraceContext.continue_from(VALID)
    assert child.trace_id == parent.trace_id
    assert child.span_id != parent.span_id
    assert TraceContext.parse(child.header) == child


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ],
)
def test_an_invalid_header_starts_a_new_trace(header: str | None) -> None:
    assert TraceContext.parse(header) is None
    fresh = TraceContext.continue_from(header)
    assert TraceContext.parse(fresh.header) == fresh
    assert fresh.trace_id not in (header or "")


def test_uppercase_and_whitespace_are_tolerated() -> None:
    assert TraceContext.parse(f"  {VALID.upper()} ") == TraceContext.parse(VALID)


@pytest.mark.parametrize(
    "trace_id",
    [
        "0x" + "4bf92f3577b34da6a3ce929d0e0e47",  # int(…, 16) would take these
        "4bf92f3577b34da6_3ce929d0e0e4736",
        " 4bf92f3577b34da6a3ce929d0e0e473",
        "0" * 32,
        "4bf92f3577b34da6a3ce929d0e0e473",  # short
    ],
)
def test_an_event_trace_id_that_is_not_32_hex_digits_starts_no_hop(trace_id: str) -> None:
    assert TraceContext.from_trace_id(trace_id) is None


def test_an_event_trace_id_of_either_case_continues_its_trace() -> None:
    hop = TraceContext.from_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736")
    assert hop is not None
    assert hop.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
