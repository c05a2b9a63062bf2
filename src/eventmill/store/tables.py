"""The store's tables (SQLAlchemy Core). Migrations in ``migrations/versions`` create them;
this module describes the current schema for queries."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

__all__ = ["Json", "JsonText", "api_keys", "events", "metadata"]


class JsonText(sa.TypeDecorator[Any]):
    """JSON kept as TEXT (SQLite): a ``JSON`` column there has NUMERIC affinity, which
    would turn a stored ``"0"`` or ``"1e16"`` into a number."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str:
        return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else orjson.loads(value)


Json = sa.JSON().with_variant(JsonText(), "sqlite")
"""``json`` on PostgreSQL (the text kept as sent, key order included), TEXT on SQLite."""

metadata = sa.MetaData()

Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""BIGINT on PostgreSQL; INTEGER on SQLite so the column aliases the rowid."""

events = sa.Table(
    "events",
    metadata,
    sa.Column("position", Position, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(128), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("external_id", sa.String(256), nullable=True),
    sa.Column("event_name", sa.String(200), nullable=False),
    sa.Column("user_id", sa.String(256), nullable=True),
    sa.Column("payload", Json, nullable=False),
    sa.Column("metadata", Json, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("id", name="uq_events_id"),
    sa.UniqueConstraint("source", "external_id", name="uq_events_source_external_id"),
    sqlite_autoincrement=True,
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(128), nullable=False),
    sa.Column("scopes", Json, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
)
