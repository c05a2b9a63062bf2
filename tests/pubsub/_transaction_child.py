"""A process that publishes in its own transaction and is then killed (run as a script).

Usage: python _transaction_child.py BUS_URL ORDERS_TABLE ORDER_ID WHEN

Opens the bus, then a transaction on the bus's database (asyncpg for postgresql://,
sqlite3 for sqlite:///), inserts the order ORDER_ID into ORDERS_TABLE, publishes
``payment.processed`` with id ORDER_ID on topic ``payments`` in that transaction and,
if WHEN is ``after-commit``, commits. It then prints ``ready`` and waits to be
SIGKILLed: with WHEN ``before-commit`` the transaction is still open then.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys

import asyncpg

from eventmill import Message, open_pubsub


async def main(bus_url: str, table: str, order_id: str, when: str) -> None:
    bus = await open_pubsub(bus_url)
    message = Message(payload=b'{"amount": 4200}', id=order_id)
    if bus_url.startswith("postgresql://"):
        conn = await asyncpg.connect(bus_url.split("?", 1)[0])
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"INSERT INTO {table} (id) VALUES ($1)", order_id)
        await bus.publish("payments", message, transaction=conn)
        if when == "after-commit":
            await tx.commit()
    else:
        db = sqlite3.connect(bus_url.removeprefix("sqlite:///").split("?", 1)[0])
        db.execute(f"INSERT INTO {table} (id) VALUES (?)", (order_id,))
        await bus.publish("payments", message, transaction=db)
        if when == "after-commit":
            db.commit()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
