"""Recoverer: turn any exception into a nack, logging the full traceback.

How it relates to the router: without Recoverer, the router already nacks a
message whose handler raised, and logs one ``WARNING`` line (exception type and
text, no traceback: a message failing on every redelivery would otherwise flood the
log). Recoverer catches the exception first, logs it with its traceback, the
handler's name, topic and the message id at ``config.level`` (default ``ERROR``) on
the ``eventmill.router.recoverer`` logger (stdlib :mod:`logging`; structlog can
render it), nacks the message itself and returns normally, so the router neither
logs again nor acks. The outcome for the message is the same (a nack: redelivery).

Place it outermost: it is the last resort, and middleware outside it never sees the
exception (a PoisonQueue outside Recoverer would never park anything).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from eventmill.message import Message
from eventmill.router.handler import Handler, HandlerResult, current_handler

__all__ = ["Recoverer", "RecovererConfig"]


@dataclass(frozen=True, slots=True)
class RecovererConfig:
    """Settings of :class:`Recoverer`."""

    logger: str = "eventmill.router.recoverer"
    """Name of the stdlib logger the traceback goes to (default
    ``"eventmill.router.recoverer"``)."""
    level: int = logging.ERROR
    """Log level of the record (default ``logging.ERROR``)."""


class Recoverer:
    """Middleware: exception → logged traceback + nack; see the module docstring."""

    def __init__(self, config: RecovererConfig | None = None) -> None:
        self.config = config or RecovererConfig()

    def __call__(self, handler: Handler) -> Handler:
        log = logging.getLogger(self.config.logger)
        level = self.config.level

        async def recover(msg: Message) -> HandlerResult:
            try:
                return await handler(msg)
            except Exception as exc:
                info = current_handler()
                log.log(
                    level,
                    "handler %s (topic %s) failed on message %s; nacked",
                    info.name if info else "?",
                    info.topic if info else "?",
                    msg.id,
                    exc_info=exc,
                )
                msg.nack()
                return None

        return recover
