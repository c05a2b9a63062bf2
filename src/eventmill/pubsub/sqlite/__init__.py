"""sqlite:/// - a durable, embedded backend on one SQLite file (WAL mode).

Publishing: ``publish`` hands its rows to the writer thread and returns once the
transaction holding them is committed (fsynced with ``synchronous=full``, the
default). Concurrent publishes are coalesced into one transaction (group commit),
so throughput grows with concurrency instead of stopping at one fsync per call.
Messages of one call are committed together, in order, or not at all. With
``synchronous=normal`` (no fsync at commit) the publishes made during one turn of
the event loop are committed in one transaction on the loop's own thread instead,
which costs less than the hand-off to the writer thread and back; if the file is
locked (by the writer thread or another process) they go to the writer thread,
which waits for the lock. Every ``CHECKPOINT_EVERY`` such commits the writer
checkpoints the WAL, so the log is rewound instead of growing under steady load.

Skipping: a group subscription made with ``subscribe_skipping(topic, group=g,
skip=(key, value))`` passes over the
messages whose metadata has that value: they count as acked by the group without
being leased or handed out. A publish of only such messages moves a group that is
caught up past them in its own transaction (no fetch, no wake-up); a group behind
passes over them when it fetches.

Consuming: a consumer group has a position (``cursor``) per topic; a new group
starts at the oldest retained message. A fetched message is *leased* to the
subscription that took it; members of a group (in this or any other process)
split the messages. ``ack`` deletes the lease, ``nack`` makes the message
available again at once, ``close`` releases every lease the subscription holds.
A live subscription renews its leases every third of ``visibility_timeout``; if
its process dies, they run out and the messages are delivered again, also after
a restart. Settlements are synchronous; they are flushed in batches by the writer
(at the latest by ``close()``; :meth:`SQLiteSubscription.flush` waits for them).

Durability: transactions holding publishes use ``PRAGMA synchronous`` as
configured (``full`` by default: fsynced before ``publish`` returns); all others
(leases, acks, releases) use ``normal``, since forgetting them in an OS crash only
causes redelivery. See :attr:`SQLiteConfig.synchronous`.

A subscription without a group reads new rows of the topic from the position the
file had when ``subscribe`` returned; nothing is stored for it.

Ordering: a single consumer sees a topic's messages in publish (commit) order,
except that nacked, released or expired messages come again before newer ones.
Several processes may share the file; SQLite serialises their writes.

Retention: messages acked by every group of their topic are deleted after
``retention`` seconds (``max_age`` deletes even unacked ones); freed pages are
reused, so the file stops growing once retention keeps up.

URL: ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` with the options of
:class:`SQLiteConfig`, e.g. ``sqlite:///bus.db?synchronous=normal&visibility_timeout=5``.
"""

from eventmill.pubsub.sqlite._pubsub import (
    SQLiteConfig,
    SQLitePubSub,
    SQLiteStats,
    SQLiteSubscription,
)

__all__ = ["SQLiteConfig", "SQLitePubSub", "SQLiteStats", "SQLiteSubscription"]
