"""Alembic migrations of the store, run by :func:`eventmill.store.open_store`."""
