"""The delivery feature's tables (SQLAlchemy Core). The migration
``store/migrations/versions/v0004_delivery.py`` creates them; this module describes
them for queries. Every statement of :mod:`eventmill.delivery.store` has an index
(``tests/delivery/test_plans.py`` checks the plans on a large table)."""

from __future__ import annotations

import sqlalchemy as sa

from eventmill.store.tables import Json

__all__ = ["attempts", "deliveries", "delivery_events", "endpoints", "metadata"]

metadata = sa.MetaData()

_TS = sa.DateTime(timezone=True)
_Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

endpoints = sa.Table(
    "delivery_endpoints",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("user_id", sa.String(256), nullable=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("description", sa.String(1024), nullable=False),
    sa.Column("event_types", Json, nullable=False),
    sa.Column("headers", Json, nullable=False),
    sa.Column("rate_limit", sa.Float, nullable=True),
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("disabled_reason", sa.String(500), nullable=True),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("previous_secret", sa.String(128), nullable=True),
    sa.Column("previous_secret_expires_at", _TS, nullable=True),
    sa.Column("failing_since", _TS, nullable=True),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
    sa.Index("ix_delivery_endpoints_user_id_id", "user_id", "id"),
)

delivery_events = sa.Table(
    "delivery_events",
    metadata,
    sa.Column("event_id", sa.String(128), primary_key=True),
    sa.Column("event_name", sa.String(200), nullable=False),
    sa.Column("user_id", sa.String(256), nullable=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
)
"""Each delivered event once (its envelope JSON as it crossed the bus), shared by its
deliveries: payload builders run on it at send time."""

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column(
        "endpoint_id",
        sa.String(32),
        sa.ForeignKey("delivery_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("user_id", sa.String(256), nullable=True),
    sa.Column("event_name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", _TS, nullable=True),
    sa.Column("lease_token", sa.String(32), nullable=True),
    sa.Column("last_attempt_at", _TS, nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.String(1000), nullable=True),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("finished_at", _TS, nullable=True),
    sa.Column("dead_at", _TS, nullable=True),
    sa.UniqueConstraint("event_id", "endpoint_id", name="uq_deliveries_event_id_endpoint_id"),
    sa.Index(
        "ix_deliveries_due",
        "next_attempt_at",
        postgresql_where=sa.text("next_attempt_at IS NOT NULL"),
        sqlite_where=sa.text("next_attempt_at IS NOT NULL"),
    ),
    sa.Index("ix_deliveries_endpoint_id_id", "endpoint_id", "id"),
    sa.Index("ix_deliveries_endpoint_id_status_id", "endpoint_id", "status", "id"),
    sa.Index("ix_deliveries_user_id_id", "user_id", "id"),
    sa.Index("ix_deliveries_status_id", "status", "id"),
    sa.Index(
        "ix_deliveries_undead",
        "id",
        postgresql_where=sa.text("status = 'failed' AND dead_at IS NULL"),
        sqlite_where=sa.text("status = 'failed' AND dead_at IS NULL"),
    ),
)
"""One row per (event, endpoint). ``status``: ``pending`` (``next_attempt_at`` is when
it is due; a claim pushes it to the lease's end), ``succeeded`` or ``failed``.
``attempts`` counts every attempt, ``step`` those of the current round of the schedule
(a manual retry starts a new round). ``dead_at``: when it was published to
``deliveries.dead``."""

attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", _Serial, primary_key=True, autoincrement=True),
    sa.Column(
        "delivery_id",
        sa.String(32),
        sa.ForeignKey("deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("started_at", _TS, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("error", sa.String(1000), nullable=True),
    sa.Column("response_body", sa.Text, nullable=True),
    sa.Index("ix_delivery_attempts_delivery_id_attempt", "delivery_id", "attempt"),
    sqlite_autoincrement=True,
)
