"""Publishing in the caller's transaction on postgresql://.

See :mod:`eventmill.pubsub._transaction`.

The messages are inserted into the log by the caller's connection, in one statement
that also NOTIFYs the topic's channel (:attr:`Sql.publish_in_transaction`). Nothing
else changes for consumers: a row's ``txid`` is the caller's transaction, so the
commit-order rule of :mod:`~eventmill.pubsub.postgres._sql` holds it back until that
transaction ends, and it is read only if it committed.
"""

from __future__ import annotations

import asyncio

import asyncpg
import asyncpg.pool

from eventmill.errors import PublishError
from eventmill.pubsub._transaction import failed, sqlalchemy_connection
from eventmill.pubsub.postgres._publishing import Row
from eventmill.pubsub.postgres._sql import Sql

__all__ = ["publish_in"]

_SCHEME = "postgresql://"
_TAKES = "an asyncpg connection in a transaction, or a SQLAlchemy AsyncConnection or AsyncSession"


async def publish_in(transaction: object, sql: Sql, tid: int, rows: list[Row]) -> None:
    """Insert ``rows`` of topic ``tid`` through ``transaction``; they commit with it."""
    tids, ids, metas, payloads = (list(col) for col in zip(*rows, strict=True))
    channel = sql.channel(tid)
    note = f"{tid}:"  # no bus's token: every bus wakes, this one too (see Wakeups)
    hint = (
        f"is it a connection to the bus's database, whose schema {sql.schema!r} holds "
        f"{sql.messages_table}? Roll the transaction back"
    )
    if isinstance(transaction, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
        if not transaction.is_in_transaction():
            raise PublishError(
                f"{_SCHEME} publish(transaction=conn): conn is not in a transaction, so the "
                "message would commit apart from the caller's writes; publish inside "
                "`async with conn.transaction():`"
            )
        try:
            await transaction.execute(
                sql.publish_in_transaction, tids, ids, metas, payloads, channel, note
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise failed(_SCHEME, exc, hint) from exc
        return
    conn = await sqlalchemy_connection(transaction, _SCHEME, dialect="postgresql", takes=_TAKES)
    from sqlalchemy import text

    params = {
        "tids": tids,
        "ids": ids,
        "metas": metas,
        "payloads": payloads,
        "channel": channel,
        "note": note,
    }
    try:
        await conn.execute(text(sql.publish_in_transaction_named), params)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise failed(_SCHEME, exc, hint) from exc
