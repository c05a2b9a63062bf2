"""the journal: event hops and rejected webhooks

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(sa.Text(), "sqlite")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "event_hops",
        sa.Column("seq", _ID, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("hop", sa.String(64), nullable=False),
        sa.Column("detail", _JSON, nullable=False),
    )
    op.create_index("ix_event_hops_event_id_seq", "event_hops", ["event_id", "seq"])
    op.create_index("ix_event_hops_at", "event_hops", ["at"])
    op.create_table(
        "rejected_webhooks",
        sa.Column("seq", _ID, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("message", sa.String(500), nullable=False),
        sa.Column("headers", _JSON, nullable=False),
    )
    op.create_index("ix_rejected_webhooks_source_seq", "rejected_webhooks", ["source", "seq"])
    op.create_index("ix_rejected_webhooks_at", "rejected_webhooks", ["at"])


def downgrade() -> None:
    op.drop_table("rejected_webhooks")
    op.drop_table("event_hops")
