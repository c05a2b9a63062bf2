"""CircuitBreaker: stop calling a handler that keeps failing, and try again later.

States, per wrapped handler:

* **closed** — calls go through; ``config.failure_threshold`` consecutive failures
  open the circuit (a success resets the count);
* **open** — the handler is not called: after ``config.open_delay`` seconds (so the
  nack → redelivery cycle does not spin) :class:`~eventmill.CircuitOpenError` (a
  :class:`~eventmill.HandlerError`) is raised and the router nacks;
* **half-open** — ``config.reset_timeout`` seconds after opening, one trial call is
  let through (others meanwhile are treated as open); its success closes the
  circuit, its failure opens it again for another ``reset_timeout``.

Only exceptions for which ``config.is_failure`` is true count as failures. Place the
breaker inside Retry to count every attempt, outside it to count exhausted messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from eventmill.errors import CircuitOpenError, ConfigurationError
from eventmill.message import Message
from eventmill.router.handler import Handler, HandlerResult, current_handler

__all__ = ["CircuitBreaker", "CircuitBreakerConfig", "CircuitState"]

CircuitState = Literal["closed", "open", "half-open"]

_log = logging.getLogger("eventmill.router.circuit_breaker")


def _always(exc: Exception) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """Settings of :class:`CircuitBreaker`."""

    failure_threshold: int = 5
    """Consecutive failures that open the circuit (default 5)."""
    reset_timeout: float = 30.0
    """Seconds the circuit stays open before a trial call (default 30)."""
    open_delay: float = 0.1
    """Seconds to wait before rejecting a message while open, so redeliveries do not
    spin in a hot loop (default 0.1)."""
    is_failure: Callable[[Exception], bool] = _always
    """Whether an exception counts as a failure (default: every exception). Others
    propagate without changing the state."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigurationError("CircuitBreakerConfig.failure_threshold must be >= 1")
        if self.reset_timeout < 0 or self.open_delay < 0:
            raise ConfigurationError("CircuitBreakerConfig timeouts must be >= 0")


class _Circuit:
    __slots__ = ("failures", "name", "opened_at", "state", "trial")

    def __init__(self) -> None:
        self.state: CircuitState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.trial = False
        self.name = "?"


class CircuitBreaker:
    """Middleware with a circuit per wrapped handler; see the module docstring.

    ``on_change(handler_name, old_state, new_state)`` is called on every transition
    (for logs or metrics). ``sleep`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        config: CircuitBreakerConfig | None = None,
        *,
        on_change: Callable[[str, CircuitState, CircuitState], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or CircuitBreakerConfig()
        self._on_change = on_change
        self._sleep = sleep
        self._clock = clock

    def _move(self, c: _Circuit, new: CircuitState) -> None:
        old, c.state = c.state, new
        if new == "open":
            c.opened_at = self._clock()
        elif new == "closed":
            c.failures = 0
        _log.warning("circuit of handler %s: %s -> %s", c.name, old, new)
        if self._on_change is not None:
            self._on_change(c.name, old, new)

    def __call__(self, handler: Handler) -> Handler:
        cfg = self.config
        c = _Circuit()

        async def breaker(msg: Message) -> HandlerResult:
            trial = False
            if c.state != "closed":
                if c.state == "open" and self._clock() - c.opened_at >= cfg.reset_timeout:
                    info = current_handler()
                    c.name = info.name if info else "?"
                    self._move(c, "half-open")
                if c.state == "half-open" and not c.trial:
                    c.trial = trial = True
                else:
                    await self._sleep(cfg.open_delay)
                    raise CircuitOpenError(f"circuit open; message {msg.id} not processed")
            try:
                result = await handler(msg)
            except Exception as exc:
                if trial:
                    c.trial = False
                if cfg.is_failure(exc):
                    if trial:
                        self._move(c, "open")
                    elif c.state == "closed":
                        c.failures += 1
                        if c.failures >= cfg.failure_threshold:
                            info = current_handler()
                            c.name = info.name if info else "?"
                            self._move(c, "open")
                raise
            except BaseException:
                if trial:
                    c.trial = False  # cancelled: let another message try
                raise
            if trial:
                c.trial = False
                self._move(c, "closed")
            elif c.failures:
                c.failures = 0
            return result

        return breaker
