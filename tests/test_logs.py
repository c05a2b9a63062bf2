"""Structured logs: one JSON object per line with the bound context, clients kept quiet."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from eventmill.logs import bind, configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: logging.getLogger(n).level for n in ("aiokafka", "nats", "uvicorn")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
    structlog.reset_defaults()


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_stdlib_lines_become_json_with_the_bound_context(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("info", json=True)
    log = logging.getLogger("eventmill.ingest")
    with bind(request_id="req-1", event_id="evt_1", trace_id=None):
        log.info("stored %s", "evt_1")
    log.warning("outside")
    first, second = _lines(capsys.readouterr().err)
    assert first["event"] == "stored evt_1"
    assert first["level"] == "info"
    assert first["logger"] == "eventmill.ingest"
    assert first["request_id"] == "req-1"
    assert first["event_id"] == "evt_1"
    assert "trace_id" not in first
    assert "timestamp" in first
    assert "request_id" not in second


def test_tracebacks_stay_inside_one_json_line(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("info", json=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("eventmill.web").exception("unhandled")
    [line] = _lines(capsys.readouterr().err)
    assert "RuntimeError: boom" in str(line["exception"])


def test_client_libraries_are_quiet_below_warning(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("info", json=True)
    logging.getLogger("aiokafka").info("Unable connect to node")
    logging.getLogger("nats").warning("disconnected; reconnecting")
    lines = _lines(capsys.readouterr().err)
    assert [line["event"] for line in lines] == ["disconnected; reconnecting"]


def test_a_terminal_gets_readable_lines(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("info", json=False)
    logging.getLogger("eventmill.app").info("ready")
    out = capsys.readouterr().err
    assert "ready" in out
    assert not out.lstrip().startswith("{")
