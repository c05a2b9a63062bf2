"""events and api_keys

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
# JSON as TEXT on SQLite: a column declared JSON there has NUMERIC affinity.
_JSON = sa.JSON().with_variant(sa.Text(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(256), nullable=True),
        sa.Column("event_name", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=True),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("metadata", _JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("processed_at", _TS, nullable=True),
        sa.Column("stored_at", _TS, nullable=False),
        sa.Column("published_at", _TS, nullable=True),
        sa.UniqueConstraint("id", name="uq_events_id"),
        sa.UniqueConstraint("source", "external_id", name="uq_events_source_external_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_user_id_position", "events", ["user_id", "position"])
    op.create_index("ix_events_event_name_position", "events", ["event_name", "position"])
    op.create_index("ix_events_source_position", "events", ["source", "position"])
    op.create_index("ix_events_created_at", "events", ["created_at"])
    op.create_index(
        "ix_events_unpublished",
        "events",
        ["position"],
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(128), nullable=False),
        sa.Column("scopes", _JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("last_used_at", _TS, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("ix_events_unpublished", table_name="events")
    op.drop_index("ix_events_created_at", table_name="events")
    op.drop_index("ix_events_source_position", table_name="events")
    op.drop_index("ix_events_event_name_position", table_name="events")
    op.drop_index("ix_events_user_id_position", table_name="events")
    op.drop_table("events")
