"""Delivery fixtures: every service test runs against a SQLite and a PostgreSQL store."""

from __future__ import annotations

from tests.ingest.support import store_url

__all__ = ["store_url"]
