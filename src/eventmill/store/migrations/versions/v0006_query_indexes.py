"""(source, event_name, position) index; event names C-collated (PostgreSQL)

Every query the store runs reads an index range bounded by its page (see
``EventStore.query``): each filter alone already had its ``(column, position)`` index,
and a query with ``user_id`` walks that user's events. ``source`` with an event name
(exact, or each of the names a pattern matches) gets its own index here, so that a
source's events of one name are not found by walking all of the name's (or the
source's). It costs little to keep: its entries are added in position order within
few (source, name) ranges. An index keyed on the user and another column would give
``user_id`` with ``source`` or ``event_name`` a page-bounded plan too, but each such
index costs the SQLite insert path about a fifth of its throughput (a batch touches
one leaf page per distinct user in every user-keyed index), so those are not made.

On PostgreSQL ``event_name`` becomes ``COLLATE "C"``: names are ASCII, and in byte
order the names starting with a prefix are one range of the index (a pattern is
answered by walking that range), whatever the database's own collation.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_INDEXES = {"ix_events_source_event_name_position": ["source", "event_name", "position"]}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "events",
            "event_name",
            type_=sa.String(200, collation="C"),
            existing_type=sa.String(200),
            existing_nullable=False,
        )
    for name, columns in _INDEXES.items():
        op.create_index(name, "events", columns)


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(name, table_name="events")
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "events",
            "event_name",
            type_=sa.String(200),
            existing_type=sa.String(200, collation="C"),
            existing_nullable=False,
        )
