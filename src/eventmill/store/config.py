"""Store URL parsing and :class:`StoreConfig`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from eventmill.errors import ConfigurationError
from eventmill.pubsub.factory import redact_url

__all__ = ["StoreConfig"]

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_OPTIONS = {"pool_size", "schema", "synchronous", "busy_timeout_ms"}


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Settings of the SQL store, usually parsed from its URL by :meth:`from_url`."""

    url: str
    """SQLAlchemy URL with the async driver (``sqlite+aiosqlite://``, ``postgresql+asyncpg://``)."""
    dialect: Literal["sqlite", "postgresql"]
    """The database kind."""
    pool_size: int = 10
    """Most pooled connections (PostgreSQL; SQLite uses up to this many readers). Default 10.
    When all are busy a caller waits up to 30 s, then gets StoreUnavailableError."""
    schema: str | None = None
    """PostgreSQL schema holding eventmill's tables (created if missing); default the
    connection's ``search_path`` (usually ``public``)."""
    synchronous: Literal["normal", "full"] = "normal"
    """SQLite ``PRAGMA synchronous`` in WAL mode: ``normal`` (default) survives a process
    crash; ``full`` also survives power loss, at the cost of an fsync per commit."""
    busy_timeout_ms: int = 5000
    """SQLite: how long a writer waits for another process's write lock (default 5000)."""

    @property
    def memory(self) -> bool:
        """Whether this is an in-memory SQLite database (one connection, process-local)."""
        return self.dialect == "sqlite" and (":memory:" in self.url or self.url.endswith("://"))

    @classmethod
    def from_url(cls, url: str) -> StoreConfig:
        """Parse a store URL.

        Accepted: ``sqlite:///relative.db``, ``sqlite:////absolute.db``,
        ``sqlite:///:memory:``, ``postgresql://user@host:port/db`` (also
        ``postgres://`` and explicit ``+aiosqlite`` / ``+asyncpg`` drivers). Options in
        the query string: ``pool_size``, ``schema`` (PostgreSQL), ``synchronous`` and
        ``busy_timeout_ms`` (SQLite); other query parameters go to the driver.
        Raises :class:`~eventmill.ConfigurationError`.
        """
        if not isinstance(url, str) or "://" not in url:
            raise ConfigurationError(
                "store URL must look like sqlite:///path.db or postgresql://..."
            )
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        dialect: Literal["sqlite", "postgresql"]
        if scheme in ("sqlite", "sqlite+aiosqlite"):
            dialect, driver = "sqlite", "sqlite+aiosqlite"
        elif scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
            dialect, driver = "postgresql", "postgresql+asyncpg"
        else:
            raise ConfigurationError(
                f"unsupported store URL scheme {parts.scheme!r}: use sqlite:// or postgresql://"
            )
        options: dict[str, str] = {}
        passthrough: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in _OPTIONS:
                options[key] = value
            else:
                passthrough.append((key, value))
        kwargs: dict[str, object] = {}
        try:
            if "pool_size" in options:
                kwargs["pool_size"] = int(options["pool_size"])
            if "busy_timeout_ms" in options:
                kwargs["busy_timeout_ms"] = int(options["busy_timeout_ms"])
        except ValueError:
            raise ConfigurationError(
                "store URL pool_size and busy_timeout_ms must be integers"
            ) from None
        if "schema" in options:
            if dialect != "postgresql":
                raise ConfigurationError("the schema option is only for postgresql:// stores")
            kwargs["schema"] = options["schema"]
        if "synchronous" in options:
            kwargs["synchronous"] = options["synchronous"].lower()
        query = urlencode(passthrough)
        clean = f"{driver}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
        return cls(url=clean, dialect=dialect, **kwargs)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ConfigurationError("store pool_size must be at least 1")
        if self.busy_timeout_ms < 0:
            raise ConfigurationError("store busy_timeout_ms must be >= 0")
        if self.synchronous not in ("normal", "full"):
            raise ConfigurationError("store synchronous must be 'normal' or 'full'")
        if self.schema is not None and _SCHEMA_RE.fullmatch(self.schema) is None:
            raise ConfigurationError(
                "store schema must be 1-63 lowercase letters, digits and '_', "
                "not starting with a digit"
            )

    def redacted(self) -> str:
        """The URL with its credentials replaced by ``***`` (for logs and errors)."""
        return redact_url(self.url)
