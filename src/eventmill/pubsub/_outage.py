"""The one line a bus logs when its server goes away, and the one when it is back.

Every retry loop of a bus (readers, ack flushes, lease renewals, publishes...) meets the
same outage; each used to log its own line per attempt. Instead they share one
:class:`Outage`: the first loop that fails logs a WARNING under the backend's logger
(``eventmill.pubsub.<backend>``) naming the server and the error, the others and every
later attempt log at DEBUG, and the first success after it logs at INFO how long it
lasted. The client libraries' own lines (redis-py, nats-py, aiokafka, asyncpg) go to
their own loggers, which :data:`eventmill.logs.CLIENT_LOGGERS` lists.
"""

from __future__ import annotations

import logging
import time

__all__ = ["Outage", "reconnects"]

_RECONNECTS: dict[str, int] = {}


def reconnects() -> dict[str, int]:
    """How often each kind of server (by URL scheme, e.g. ``redis://``) came back after
    an outage, in this process: what ``eventmill_bus_reconnects_total`` reports."""
    return dict(_RECONNECTS)


class Outage:
    """Whether the server of one bus is unreachable, and the log lines that say so.

    ``where`` names the server without secrets (a redacted URL). Call :meth:`lost` on
    a connection error, :meth:`ok` after a success (cheap while nothing is lost).
    """

    __slots__ = ("_log", "_scheme", "_since", "_where")

    def __init__(self, log: logging.Logger, scheme: str, where: str) -> None:
        self._log = log
        self._scheme = scheme
        self._where = where
        self._since: float | None = None

    @property
    def down(self) -> bool:
        """Whether the server is unreachable (since the last :meth:`lost`, until :meth:`ok`)."""
        return self._since is not None

    def lost(self, what: str, error: str) -> None:
        """``what`` (a reader, an ack flush...) failed with a connection ``error``."""
        if self._since is not None:
            self._log.debug("%s %s: %s; retrying", self._scheme, what, error)
            return
        self._since = time.monotonic()
        self._log.warning(
            "%s server %s unreachable (%s: %s); retrying until it is back",
            self._scheme,
            self._where,
            what,
            error,
        )

    def ok(self) -> None:
        """An operation succeeded: the server is back, if it was away."""
        since = self._since
        if since is None:
            return
        self._since = None
        _RECONNECTS[self._scheme] = _RECONNECTS.get(self._scheme, 0) + 1
        self._log.info(
            "%s server %s reachable again after %.1fs",
            self._scheme,
            self._where,
            time.monotonic() - since,
        )
