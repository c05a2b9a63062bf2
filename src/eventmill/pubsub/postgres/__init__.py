"""postgresql:// - durable topics in PostgreSQL tables (asyncpg).

Delivery model (see :mod:`eventmill.pubsub.postgres._sql` for the tables):

* ``publish`` returns after the messages are committed. Concurrent publish calls are
  coalesced (group commit): up to ``publish_batch`` messages from many calls go into
  one binary ``COPY`` in one transaction, ``publish_workers`` transactions at a time
  (a worker with a free slot beside it takes half the waiting calls, so one batch
  commits while the next one's publishers run); each call returns when the
  transaction holding its messages commits. Messages of one call are never split
  between transactions.
* Consumer groups are durable. Each group has a cursor in the log's commit order;
  a member claims the next batch (up to ``prefetch`` messages) by moving the cursor
  past it and leasing it for ``visibility_timeout`` (renewed while the member is
  alive), so a message goes to one member at a time, and a message committed late
  is never skipped (see :mod:`eventmill.pubsub.postgres._sql`). A new group starts
  at the oldest retained message (``replay``).
* A batch whose messages are all acknowledged is deleted; a nacked message moves
  into a lease of its own, claimable at once; these are flushed every
  ``ack_interval`` (and on ``close``). Acks of a batch still in progress are written
  into its lease once 50 ms old (and by :meth:`PostgresPubSub.flush_settlements`). A
  consumer that dies holding a batch loses it after ``visibility_timeout``; the
  batch's messages not yet written as acknowledged are delivered again.
* Delivery follows commit order, so a transaction that wrote to the database and
  stays open holds back messages committed after it began, until it ends (a
  warning names its backend pid after 10 s); keep write transactions short.
* An idle consumer sleeps. A publish wakes the consumers of its topic in the same
  process at once, and those of other processes with a NOTIFY on the topic's channel
  right after the commit (coalesced to one per topic every 5 ms), so a new message
  arrives within milliseconds; ``poll_interval`` is only a fallback. A NOTIFY is only
  a wake-up: one that is lost delays delivery and loses nothing.
* Ephemeral subscriptions (no group) see every message committed after ``subscribe``
  returns, in commit order, through an in-memory cursor per topic and process
  (nothing is stored for them server-side; a LISTEN connection going down only
  delays them).
* Reconnect: every operation retries connection failures with capped exponential
  backoff; publishes give up after ``reconnect_timeout`` (raising
  :class:`~eventmill.BackendUnavailableError`), consumers and the LISTEN connection
  retry while the bus is open. A publish whose COMMIT was sent but not answered is
  retried, so a message can be stored twice (receivers drop duplicates by id);
  nothing acknowledged as published is lost.
* Retention: messages every group has acknowledged are deleted ``retention`` seconds
  after publishing, by one process at a time, every ``cleanup_interval``.

URL: ``postgresql://user:password@host:5432/db?schema=public&table_prefix=eventmill_``
plus any field of :class:`PostgresConfig`.
"""

from eventmill.pubsub.postgres._pubsub import PostgresConfig, PostgresPubSub

__all__ = ["PostgresConfig", "PostgresPubSub"]
