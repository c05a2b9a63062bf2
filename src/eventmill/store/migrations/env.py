"""Alembic environment: eventmill runs migrations programmatically on a connection it
passes in ``config.attributes["connection"]`` (see ``eventmill.store.database``)."""

from __future__ import annotations

from alembic import context

from eventmill.store.database import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("eventmill migrations run through eventmill.store.open_store()")

context.configure(
    connection=connection,
    target_metadata=None,
    version_table=VERSION_TABLE,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
