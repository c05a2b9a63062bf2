"""Service configuration: ``EVENTMILL_*`` environment variables and an optional TOML file.

Precedence, highest first: arguments passed to :class:`Settings`, environment
variables, the TOML file named by ``EVENTMILL_CONFIG`` (or ``Settings.load(path)``),
then the defaults below. Nested values use ``__`` in environment variables
(``EVENTMILL_SOURCES__GITHUB__SCHEME=github``) or JSON
(``EVENTMILL_SOURCES='{"github": {"scheme": "github", "secrets": ["..."]}}'``).

Secrets are :class:`~pydantic.SecretStr`: they print as ``**********`` and are
never logged or echoed in error bodies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from eventmill.delivery.config import DeliverySettings
from eventmill.errors import ConfigurationError
from eventmill.ingest.config import DEFAULT_MAX_BODY_BYTES, IngestSettings, SourceConfig
from eventmill.realtime.config import RealtimeSettings
from eventmill.web.seam import ROLES, Role
from eventmill.web.tokens import JwtSettings

__all__ = ["DEFAULT_MAX_BODY_BYTES", "Settings", "SourceConfig"]


class Settings(BaseSettings, IngestSettings):
    """Everything ``eventmill serve`` reads. Every field documents its default.

    The service's own fields are below; each feature adds its section: ingest's fields
    sit at the top level (:class:`~eventmill.ingest.config.IngestSettings`:
    ``max_body_bytes``, ``request_timeout_seconds``, ``razorpay_webhook_secret``,
    ``sources``, the relay and audit settings), later features nest theirs
    (``EVENTMILL_JWT__SECRET``).
    """

    model_config = SettingsConfigDict(
        env_prefix="EVENTMILL_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    # -- where things live ---------------------------------------------------------------
    data_dir: Path = Path("eventmill-data")
    """Directory of the embedded databases (default ``./eventmill-data``; created on start)."""
    bus_url: str | None = None
    """Pub/sub backend URL (default ``sqlite:///<data_dir>/bus.db``); any URL
    :func:`eventmill.open_pubsub` accepts: ``memory://``, ``redis://…``, ``nats://…``, …"""
    store_url: str | None = None
    """Event store database URL (default ``sqlite+aiosqlite:///<data_dir>/events.db``;
    PostgreSQL: ``postgresql+asyncpg://user@host/db``)."""

    # -- the system description's names (used only when bus_url is not set) ---------------
    pubsub_backend: (
        Literal["memory", "sqlite", "postgres", "postgresql", "redis", "nats", "kafka"] | None
    ) = Field(default=None, validation_alias=AliasChoices("pubsub_backend", "PUBSUB_BACKEND"))
    """``PUBSUB_BACKEND``: picks the bus when ``bus_url`` is unset — ``kafka`` with
    ``KAFKA_BROKERS``, ``redis`` with ``REDIS_URL``, ``nats`` with ``NATS_URL``,
    ``postgres`` with the store's PostgreSQL URL, ``sqlite`` / ``memory`` embedded."""
    kafka_brokers: str | None = Field(
        default=None, validation_alias=AliasChoices("kafka_brokers", "KAFKA_BROKERS")
    )
    """``KAFKA_BROKERS``: ``host:port[,host:port]`` for ``PUBSUB_BACKEND=kafka``."""
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("redis_url", "REDIS_URL")
    )
    """``REDIS_URL`` for ``PUBSUB_BACKEND=redis`` (default ``redis://127.0.0.1:6379``)."""
    nats_url: str | None = Field(
        default=None, validation_alias=AliasChoices("nats_url", "NATS_URL")
    )
    """``NATS_URL`` for ``PUBSUB_BACKEND=nats`` (default ``nats://127.0.0.1:4222``)."""

    # -- HTTP ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Address ``eventmill serve`` binds (default ``127.0.0.1``)."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Port ``eventmill serve`` binds (default 8080, as in the system description)."""

    # -- events ----------------------------------------------------------------------------
    accept_unknown_events: bool = True
    """Whether events whose name has no registered model are accepted (default yes)."""

    # -- end users -------------------------------------------------------------------------
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    """How end users' JWTs are verified (``EVENTMILL_JWT__SECRET``, ``__PUBLIC_KEY``,
    ``__JWKS_URL``, ``__AUDIENCE``, ``__ISSUER``; default: none configured)."""

    # -- outbound webhooks -----------------------------------------------------------------
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    """Outbound webhook delivery (``EVENTMILL_DELIVERY__RETRY_SCHEDULE='[0.2, 0.5]'``,
    ``EVENTMILL_DELIVERY__ALLOW_NETWORKS='["127.0.0.0/8"]'``, …; see
    :class:`~eventmill.delivery.config.DeliverySettings`)."""

    # -- realtime --------------------------------------------------------------------------
    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)
    """WebSocket, SSE, the JS client and the dashboard (``EVENTMILL_REALTIME__*``: allowed
    origins, heartbeat, buffers and limits, resume; see
    :class:`~eventmill.realtime.config.RealtimeSettings`)."""

    # -- operations ------------------------------------------------------------------------
    roles: Annotated[list[Role], NoDecode] = Field(
        default_factory=lambda: list(ROLES), min_length=1
    )
    """What this process runs (``EVENTMILL_ROLES=api,ingest`` or ``serve --role``; default
    all): ``ingest`` the webhook receivers, ``/v1/events``, the outbox relay and the
    audit handler; ``delivery`` the fan-out and the dispatcher; ``realtime`` ``/ws``,
    ``/sse``, the dashboard and the hub; ``api`` the management routes (endpoints,
    deliveries, replay, traces). Every role serves ``/healthz``, ``/readyz`` and
    ``/metrics``."""
    dev_secrets: bool = True
    """On the embedded default (a SQLite store in ``data_dir``), ``serve`` and ``demo`` use
    development secrets from ``<data_dir>/dev-secrets.json`` for what is not configured:
    the Razorpay webhook secret, the JWT secret, and loopback outbound destinations
    (default on; a PostgreSQL store never uses them)."""
    shutdown_grace_seconds: int = Field(default=30, ge=1)
    """On SIGTERM, how long in-flight requests, handlers and deliveries get to finish
    before the process stops them (default 30 s)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the service (default ``info``)."""

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        data_dir = self.data_dir
        if self.store_url is None:
            object.__setattr__(self, "store_url", f"sqlite+aiosqlite:///{data_dir / 'events.db'}")
        if self.bus_url is None:
            object.__setattr__(self, "bus_url", self._bus_from_backend())
        return self

    def _bus_from_backend(self) -> str:
        """The bus URL named by ``PUBSUB_BACKEND`` and its companion, else the default."""
        backend = self.pubsub_backend
        if backend == "kafka":
            if not self.kafka_brokers:
                raise ValueError("PUBSUB_BACKEND=kafka needs KAFKA_BROKERS (host:port,...)")
            brokers = ",".join(b.strip() for b in self.kafka_brokers.split(",") if b.strip())
            return f"kafka://{brokers}"
        if backend == "redis":
            return self.redis_url or "redis://127.0.0.1:6379"
        if backend == "nats":
            return self.nats_url or "nats://127.0.0.1:4222"
        if backend == "memory":
            return "memory://"
        if backend in ("postgres", "postgresql"):
            store = self.store
            if not store.startswith(("postgresql", "postgres")):
                raise ValueError(
                    "PUBSUB_BACKEND=postgres uses the store's database: set "
                    "EVENTMILL_STORE_URL=postgresql://… (or EVENTMILL_BUS_URL)"
                )
            return "postgresql://" + store.split("://", 1)[1]
        # sqlite, or nothing set. Same durability as the default store (the source of
        # truth the outbox relay re-publishes from): WAL with synchronous=normal survives
        # a process kill; for power-loss durability set ?synchronous=full on both URLs.
        return f"sqlite:///{self.data_dir / 'bus.db'}?synchronous=normal"

    @property
    def bus(self) -> str:
        """The effective bus URL."""
        assert self.bus_url is not None
        return self.bus_url

    @property
    def store(self) -> str:
        """The effective store URL."""
        assert self.store_url is not None
        return self.store_url

    def uses_data_dir(self) -> bool:
        """Whether an embedded SQLite database lives in :attr:`data_dir`."""
        return self.bus.startswith("sqlite:") or self.store.startswith("sqlite")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("EVENTMILL_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @classmethod
    def _check_keys(cls, path: Path | None) -> None:
        """Refuse top-level keys of the config file that name no setting (a typo there
        would otherwise be dropped in silence; nested sections check their own)."""
        import tomllib

        from pydantic import AliasChoices

        if path is None:
            return
        try:
            with path.open("rb") as f:
                keys = set(tomllib.load(f))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:  # TOML is UTF-8 text
            raise ConfigurationError(
                f"config file {str(path)!r} is not valid TOML: not UTF-8 text (at byte {exc.start})"
            ) from None
        except OSError as exc:
            raise ConfigurationError(
                f"config file {str(path)!r} cannot be read: {exc.strerror or exc}"
            ) from None
        known = set(cls.model_fields)
        for field in cls.model_fields.values():
            if isinstance(field.validation_alias, AliasChoices):
                known.update(str(c).lower() for c in field.validation_alias.choices)
        unknown = sorted(k for k in keys if k.lower() not in known)
        if unknown:
            raise ConfigurationError(
                f"config file {str(path)!r}: unknown setting(s) {', '.join(map(repr, unknown))}"
            )

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Read the settings (env, then ``config_file`` or ``$EVENTMILL_CONFIG``).

        Raises :class:`~eventmill.ConfigurationError` naming the bad field (never its value).
        """
        import tomllib

        from pydantic import ValidationError
        from pydantic_settings import SettingsError

        path = Path(config_file) if config_file is not None else None
        if path is not None and not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise ConfigurationError(f"config file {str(path)!r} {problem}")
        named = os.environ.get("EVENTMILL_CONFIG")
        if path is None and named and not Path(named).is_file():
            raise ConfigurationError(
                f"EVENTMILL_CONFIG names {named!r}, which is not a file (unset it to use none)"
            )
        cls._check_keys(path or (Path(named) if named else None))
        try:
            if path is None:
                return cls(**overrides)
            previous = os.environ.get("EVENTMILL_CONFIG")
            os.environ["EVENTMILL_CONFIG"] = str(path)
            try:
                return cls(**overrides)
            finally:
                if previous is None:
                    os.environ.pop("EVENTMILL_CONFIG", None)
                else:
                    os.environ["EVENTMILL_CONFIG"] = previous
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file is not valid TOML: {exc}") from None
        except SettingsError as exc:  # an environment variable that is not the JSON it must be
            cause = exc.__cause__ or exc
            raise ConfigurationError(
                f"invalid settings: {str(exc).split(' from source')[0]} ({type(cause).__name__})"
            ) from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                for err in exc.errors(include_input=False)
            )
            raise ConfigurationError(f"invalid settings: {problems}") from None
