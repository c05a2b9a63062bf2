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
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import structlog

__all__ = ["CLIENT_LOGGERS", "bind", "configure_logging"]

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
            structlog.processors.format_exc_info if json else _keep,
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


def _keep(logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event  # the console renderer formats exc_info itself


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
