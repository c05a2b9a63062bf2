"""delivery: endpoints, delivered events, deliveries and their attempts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
# JSON as TEXT on SQLite: a column declared JSON there has NUMERIC affinity.
_JSON = sa.JSON().with_variant(sa.Text(), "sqlite")
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "delivery_endpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(256), nullable=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("description", sa.String(1024), nullable=False),
        sa.Column("event_types", _JSON, nullable=False),
        sa.Column("headers", _JSON, nullable=False),
        sa.Column("rate_limit", sa.Float, nullable=True),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("disabled_reason", sa.String(500), nullable=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("previous_secret", sa.String(128), nullable=True),
        sa.Column("previous_secret_expires_at", _TS, nullable=True),
        sa.Column("failing_since", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_index("ix_delivery_endpoints_user_id_id", "delivery_endpoints", ["user_id", "id"])
    op.create_table(
        "delivery_events",
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("event_name", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "deliveries",
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
    )
    due = sa.text("next_attempt_at IS NOT NULL")
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["next_attempt_at"],
        postgresql_where=due,
        sqlite_where=due,
    )
    op.create_index("ix_deliveries_endpoint_id_id", "deliveries", ["endpoint_id", "id"])
    op.create_index(
        "ix_deliveries_endpoint_id_status_id", "deliveries", ["endpoint_id", "status", "id"]
    )
    op.create_index("ix_deliveries_user_id_id", "deliveries", ["user_id", "id"])
    op.create_index("ix_deliveries_status_id", "deliveries", ["status", "id"])
    undead = sa.text("status = 'failed' AND dead_at IS NULL")
    op.create_index(
        "ix_deliveries_undead", "deliveries", ["id"], postgresql_where=undead, sqlite_where=undead
    )
    op.create_table(
        "delivery_attempts",
        sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
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
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_delivery_attempts_delivery_id_attempt",
        "delivery_attempts",
        ["delivery_id", "attempt"],
    )


def downgrade() -> None:
    op.drop_table("delivery_attempts")
    op.drop_table("deliveries")
    op.drop_table("delivery_events")
    op.drop_table("delivery_endpoints")
