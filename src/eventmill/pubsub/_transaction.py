"""The caller's open transaction, as ``publish(topic, *messages, transaction=...)`` takes it.

postgresql:// and sqlite:/// keep their log in a database table, so a message can be
inserted by the caller's own connection, inside the transaction that holds the
caller's other writes: it commits with them or not at all (the transactional outbox,
without an outbox table). This module recognises the SQLAlchemy objects both
backends take (imported only when such an object is given); each backend handles
its own driver's connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventmill.errors import PublishError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["failed", "sqlalchemy_connection", "unsupported"]


async def sqlalchemy_connection(
    transaction: object, scheme: str, *, dialect: str, takes: str
) -> AsyncConnection:
    """The SQLAlchemy ``AsyncConnection`` of ``transaction`` (an ``AsyncConnection``, or an
    ``AsyncSession``: its connection, in its transaction) on a ``dialect`` database.

    Raises ``TypeError`` (:func:`unsupported`, naming what the backend ``takes``) for any
    other object, and :class:`~eventmill.PublishError` for a connection to another kind of
    database or in ``AUTOCOMMIT`` mode, whose statements would commit one by one. A
    connection with no transaction begun yet is fine: SQLAlchemy begins one with the first
    statement, which the caller then commits (or rolls back).
    """
    if not type(transaction).__module__.startswith("sqlalchemy"):
        raise unsupported(scheme, transaction, takes)
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(transaction, AsyncSession):
        conn = await transaction.connection()
    elif isinstance(transaction, AsyncConnection):
        conn = transaction
    else:
        raise unsupported(scheme, transaction, takes)
    if conn.dialect.name != dialect:
        raise PublishError(
            f"{scheme} cannot publish in a transaction of a {conn.dialect.name} database: "
            "the transaction must be on the bus's own database"
        )
    if conn.sync_connection is not None and (
        conn.sync_connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    ):
        raise PublishError(
            f"{scheme} cannot publish in this transaction: the connection is in AUTOCOMMIT "
            "mode, so the message would commit at once, apart from the caller's other writes"
        )
    return conn


def unsupported(scheme: str, transaction: object, takes: str) -> TypeError:
    """The error for a ``transaction`` the backend cannot publish in."""
    return TypeError(
        f"{scheme} publish(transaction=...) takes {takes}, not {type(transaction).__name__}"
    )


def failed(scheme: str, exc: BaseException, hint: str) -> PublishError:
    """The error for an insert that failed in the caller's transaction (which the database
    has most likely aborted: the caller rolls it back)."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    detail = f"{name}: {text}" if text else name
    return PublishError(f"{scheme} publish in the caller's transaction failed ({detail}); {hint}")
