"""A consumer process for the sqlite:/// SIGKILL test (run as a script, not collected).

Usage: python _sqlite_child.py DB TOPIC GROUP COUNT ACK

Subscribes to TOPIC with GROUP, receives COUNT messages, acks the first ACK of
them, waits until those acks are committed, prints one JSON line
``{"acked": [...], "held": [...]}`` and then holds the rest unacked until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from eventmill.pubsub.sqlite import SQLiteConfig, SQLitePubSub


async def main(path: str, topic: str, group: str, count: int, ack: int) -> None:
    bus = SQLitePubSub(
        SQLiteConfig(path=path, visibility_timeout=1.0, poll_interval=0.05, prefetch=count)
    )
    await bus.start()
    sub = await bus.subscribe(topic, group=group)
    got = [await anext(sub) for _ in range(count)]
    for m in got[:ack]:
        m.ack()
    await sub.flush()
    report = {"acked": [m.id for m in got[:ack]], "held": [m.id for m in got[ack:]]}
    print(json.dumps(report), flush=True)
    await asyncio.Event().wait()  # hold the rest until SIGKILL


if __name__ == "__main__":
    db, topic, group, count, ack = sys.argv[1:6]
    asyncio.run(main(db, topic, group, int(count), int(ack)))
