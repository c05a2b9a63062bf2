"""``open_pubsub(url)``: pick and start a backend by URL scheme."""

from __future__ import annotations

import importlib
from typing import Final, Protocol, cast
from urllib.parse import parse_qsl, urlsplit

from eventmill.errors import ConfigurationError
from eventmill.pubsub.base import PubSub

__all__ = ["BACKENDS", "open_pubsub", "redact_url"]

#: scheme -> "module:Class"; modules are imported on first use so that a user of
#: memory:// never imports redis, asyncpg, nats or aiokafka.
BACKENDS: dict[str, str] = {
    "memory": "eventmill.pubsub.memory:MemoryPubSub",
    "sqlite": "eventmill.pubsub.sqlite:SQLitePubSub",
    "postgresql": "eventmill.pubsub.postgres:PostgresPubSub",
    "postgres": "eventmill.pubsub.postgres:PostgresPubSub",
    "redis": "eventmill.pubsub.redis:RedisPubSub",
    "rediss": "eventmill.pubsub.redis:RedisPubSub",
    "nats": "eventmill.pubsub.nats:NatsPubSub",
    "tls": "eventmill.pubsub.nats:NatsPubSub",
    "kafka": "eventmill.pubsub.kafka:KafkaPubSub",
}


class _Backend(Protocol):
    @classmethod
    def from_url(cls, url: str) -> PubSub: ...


_SECRET_PARAMETERS: Final = frozenset(
    {"password", "sslpassword", "token", "secret", "api_key", "apikey", "nkey", "jwt"}
)
"""Query parameters whose values are credentials (``postgresql://…?password=…``)."""


def redact_url(url: str) -> str:
    """Return ``url`` with its credentials replaced by ``***`` (for logs and errors): a
    password, a NATS token (``nats://TOKEN@host``: the user part is the token), and
    credential query parameters (``password=``, ``token=``, ...)."""
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if password is not None:
        netloc = netloc.replace(f":{password}@", ":***@", 1)
    elif username and parts.scheme.lower().startswith(("nats", "tls")):
        netloc = netloc.replace(f"{username}@", "***@", 1)
    query = parts.query
    if query and any(
        name.lower() in _SECRET_PARAMETERS for name, _ in parse_qsl(query, keep_blank_values=True)
    ):
        query = "&".join(
            f"{name}=***" if name.lower() in _SECRET_PARAMETERS else piece
            for piece in query.split("&")
            for name in [piece.split("=", 1)[0]]
        )
    if netloc == parts.netloc and query == parts.query:
        return url
    return parts._replace(netloc=netloc, query=query).geturl()


def backend_class(url: str) -> type[_Backend]:
    """Return the backend class for ``url``'s scheme (imported on demand)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    scheme = scheme.split("+", 1)[0]  # postgresql+asyncpg:// -> postgresql
    target = BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(set(BACKENDS)))
        raise ConfigurationError(f"unknown pub/sub URL {redact_url(url)!r}: use one of {known}")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"backend for {scheme}:// is not available ({exc.name or exc} could not be imported)"
        ) from exc
    return cast("type[_Backend]", getattr(module, cls_name))


async def open_pubsub(url: str) -> PubSub:
    """Create the backend named by ``url``, connect it, and return it.

    Examples: ``memory://``, ``sqlite:///bus.db`` (relative to the working directory),
    ``sqlite:////var/lib/eventmill/bus.db`` (absolute), ``postgresql://user@host/db``,
    ``redis://localhost:6379/0``, ``nats://localhost:4222``, ``kafka://localhost:9092``.
    Options go in the query
    string and are documented by each backend's config class. Use the result as an
    async context manager, or call ``await bus.close()``.
    """
    pubsub = backend_class(url).from_url(url)
    start = getattr(pubsub, "start", None)
    if start is not None:
        await start()
    return pubsub
