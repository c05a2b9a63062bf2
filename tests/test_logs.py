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


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
KEY = "em_606aa07f9062_Zm9vYmFyYmF6cXV4"


@pytest.mark.parametrize("json_lines", [True, False])
def test_credentials_never_reach_a_line_at_any_level(
    capsys: pytest.CaptureFixture[str], restore_logging: None, json_lines: bool
) -> None:
    """What a server's debug lines print (the handshake's request line and headers),
    messages with arguments, extras and tracebacks: every credential is masked."""
    configure_logging("debug", json=json_lines)
    # (a logger of its own: another test's uvicorn server may have set uvicorn's level)
    log = logging.getLogger("eventmill.tests.handshake")
    log.debug("< GET /ws?token=%s&events=a.* HTTP/1.1", JWT)
    log.debug("< authorization: Bearer %s", JWT)
    log.debug("< Cookie: eventmill_token=%s; theme=dark", JWT)
    log.debug("< x-api-key: %s", KEY)
    log.debug("< X-Razorpay-Signature: %s", "a" * 64)
    # a client that percent-encoded its own query ("=" as %3D: no word boundary before)
    log.info("GET /sse?x=1%%3Btoken%%3D%s HTTP/1.1", JWT)
    log.info("GET /sse?events=a.*%%26token%%3D%s HTTP/1.1", KEY)
    logging.getLogger("eventmill.web").info(
        "called with %s", KEY, extra={"header": f"Bearer {JWT}"}
    )
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        log.exception("failed")
    out = capsys.readouterr().err
    assert JWT not in out
    assert KEY not in out
    assert "a" * 64 not in out
    assert "token=***&events=a.*" in out  # the rest of each line stays
    assert "authorization: ***" in out
    assert "em_***" in out


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


def test_uvicorns_coloured_copy_of_a_message_is_left_out(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("info", json=True)
    logging.getLogger("eventmill.tests.uvicorn").info(
        "Started server process [%d]",
        42,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )
    [line] = _lines(capsys.readouterr().err)
    assert line["event"] == "Started server process [42]"
    assert "color_message" not in line
