"""Timeout: cancel a handler that runs too long.

The handler runs under :func:`asyncio.timeout`; when time is up it is cancelled (a
``CancelledError`` is raised at its current ``await``) and
:class:`~eventmill.HandlerTimeoutError` (a :class:`~eventmill.HandlerError` and a
:class:`TimeoutError`) propagates, so the router nacks. Place Timeout innermost
(inside Retry) so each attempt gets the full time; outside Retry it bounds all
attempts together.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from eventmill.errors import ConfigurationError, HandlerTimeoutError
from eventmill.message import Message
from eventmill.router.handler import Handler, HandlerResult, current_handler

__all__ = ["Timeout", "TimeoutConfig"]


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Settings of :class:`Timeout`."""

    seconds: float = 30.0
    """Longest a handler call may take before it is cancelled (default 30)."""

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ConfigurationError("TimeoutConfig.seconds must be > 0")


class Timeout:
    """Middleware cancelling handler calls that exceed ``config.seconds``."""

    def __init__(self, config: TimeoutConfig | None = None) -> None:
        self.config = config or TimeoutConfig()

    def __call__(self, handler: Handler) -> Handler:
        seconds = self.config.seconds

        async def timeout(msg: Message) -> HandlerResult:
            deadline = asyncio.timeout(seconds)
            try:
                async with deadline:
                    return await handler(msg)
            except TimeoutError as exc:
                if isinstance(exc, HandlerTimeoutError) or not deadline.expired():
                    raise  # the handler's own TimeoutError (an HTTP call's, say): as it is
                info = current_handler()
                name = info.name if info else "handler"
                raise HandlerTimeoutError(
                    f"{name} took longer than {seconds}s on message {msg.id}; cancelled"
                ) from exc

        return timeout
