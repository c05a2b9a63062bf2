"""delivery: endpoints' due time, deliveries due by endpoint

Each endpoint notes when its next delivery is due (``next_due_at``, a lower bound
kept by every write that makes a delivery due), so a claim finds the endpoints with
due work through their own index and then each endpoint's oldest due deliveries
through ``ix_deliveries_endpoint_due``: its cost no longer depends on how many due
deliveries other endpoints (a hanging one, with a full lane) have waiting. The index on
``next_attempt_at`` alone goes: nothing reads it now, and a planner that took it for
one endpoint's rows would walk every other endpoint's.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN (not a batch copy: on SQLite, dropping the old table would
    # cascade-delete every delivery through the foreign key)
    op.add_column(
        "delivery_endpoints", sa.Column("next_due_at", sa.DateTime(timezone=True), nullable=True)
    )
    has_due = sa.text("next_due_at IS NOT NULL")
    op.create_index(
        "ix_delivery_endpoints_next_due_at",
        "delivery_endpoints",
        ["next_due_at"],
        postgresql_where=has_due,
        sqlite_where=has_due,
    )
    due = sa.text("next_attempt_at IS NOT NULL")
    op.create_index(
        "ix_deliveries_endpoint_due",
        "deliveries",
        ["endpoint_id", "next_attempt_at"],
        postgresql_where=due,
        sqlite_where=due,
    )
    op.drop_index("ix_deliveries_due", table_name="deliveries")
    op.execute(
        "UPDATE delivery_endpoints SET next_due_at = (SELECT min(d.next_attempt_at) "
        "FROM deliveries d WHERE d.endpoint_id = delivery_endpoints.id "
        "AND d.next_attempt_at IS NOT NULL)"
    )


def downgrade() -> None:
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("next_attempt_at IS NOT NULL"),
        sqlite_where=sa.text("next_attempt_at IS NOT NULL"),
    )
    op.drop_index("ix_deliveries_endpoint_due", table_name="deliveries")
    op.drop_index("ix_delivery_endpoints_next_due_at", table_name="delivery_endpoints")
    op.execute("ALTER TABLE delivery_endpoints DROP COLUMN next_due_at")
