"""Structured logs for ``eventmill serve``: JSON when not on a terminal, readable when on one.

Every log line of the process — eventmill's own (stdlib ``logging``), uvicorn's and the
clients' — goes through structlog's processors, so each is one JSON object (``event``
= the message, ``level``, ``logger``, ``timestamp``) carrying the context bound for the
request or message being handled: ``request_id``, ``event_id``, ``correlation_id``,
``trace_id`` (bind them with :func:`bind`, which scopes them to the current task).
Third-party clients' own lines (nats-py, aiokafka, redis, asyncpg) are kept at
``WARNING`` and above unless ``EVENTMILL_LOG_LEVEL=debug``; silence one entirely with
``logging.getLogger("aiokafka").setLevel(logging.CRITICAL)`` in an embedding program.
nats-py reports through callbacks rather than a logger: eventmill logs what they say
under ``eventmill.pubsub.nats.client``. Whatever the clients say, eventmill logs its
own line when a server goes away (and when it is back) under
``eventmill.pubsub.<backend>``.

Credentials never reach a line, whatever the level: every string of every line is
passed through :func:`redact`, which masks tokens in query strings (``token=***``),
the values of credential headers (``Authorization``, ``Cookie``, ``X-API-Key``,
signature headers: a server's debug lines print the handshake's headers), bearer
credentials, eventmill API keys (``em_***``) and anything shaped like a JWT.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import structlog

__all__ = ["CLIENT_LOGGERS", "bind", "configure_logging", "redact"]

CLIENT_LOGGERS = (
    "aiokafka",
    "kafka",
    "nats",
    "eventmill.pubsub.nats.client",
    "redis",
    "asyncpg",
    "aiosqlite",
    "alembic",
)
"""Loggers of the client libraries eventmill drives: quiet below WARNING by default.
``eventmill.pubsub.nats.client`` carries nats-py's reports (its error, disconnect and
reconnect callbacks)."""


_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    # a header line (websockets' debug lines: "< authorization: Bearer …")
    (
        re.compile(
            r"(?im)^([<>]?\s*(?:proxy-)?(?:authorization|cookie|set-cookie|x-api-key"
            r"|x-razorpay-signature|webhook-signature|x-hub-signature(?:-256)?)\s*:\s*)\S.*$"
        ),
        r"\1***",
    ),
    (re.compile(r"(?i)([?&](?:token|access_token|id_token|api_key)=)[^&\s\"'#]+"), r"\1***"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    # also right after a percent-encoded "=" or ";" (``%3DeyJ…``: no word boundary there)
    (re.compile(r"(?:\b|(?<=%3[DdBb]))em_[A-Za-z0-9_-]{8,}"), "em_***"),
    (re.compile(r"(?:\b|(?<=%3[DdBb]))eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "***"),
)


def redact(text: str) -> str:
    """``text`` with the credentials in it masked (see the module's docs)."""
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def _redact(logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("color_message", None)  # uvicorn's copy of the message with terminal colours
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Route every stdlib log record through structlog, rendered as JSON (``json=True``,
    the default when stderr is not a terminal) or as readable lines (on a terminal)."""
    if json is None:
        json = not sys.stderr.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # a string, so it is redacted too
            _redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(numeric)
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers[:] = []
        uv.propagate = True
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


@contextlib.contextmanager
def bind(**values: str | None) -> Iterator[None]:
    """Bind ``values`` (``None`` ones skipped) to every log line of the current task
    until the block ends."""
    present = {k: v for k, v in values.items() if v is not None}
    tokens = structlog.contextvars.bind_contextvars(**present)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
