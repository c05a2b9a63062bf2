"""redis:// and rediss:// - Redis Streams with consumer groups.

Layout: topic ``T`` is the stream at key ``prefix + T`` (default prefix
``eventmill:``). A message is one entry with the fields ``id``, ``metadata`` (JSON
object, omitted when empty) and ``payload`` (raw bytes).

* **Publish**: ``XADD`` (with ``MAXLEN ~ maxlen`` when set). Concurrent publishes
  are coalesced into one pipelined round trip; each call returns after Redis
  replied to each of its ``XADD`` commands. While Redis is away a publish retries
  with capped backoff and raises :class:`~eventmill.BackendUnavailableError` after
  ``publish_timeout``.
* **Groups**: ``XGROUP CREATE ... 0 MKSTREAM`` on first subscribe, so a new group
  starts at the oldest retained entry. Each subscription is one consumer with a
  unique name, reading with blocking ``XREADGROUP``; acks are batched ``XACK``\\ s;
  entries not settled within ``claim_idle`` seconds (their consumer died) are
  taken over with ``XAUTOCLAIM``; ``nack`` redelivers at once to the same
  subscription; ``close`` releases unsettled entries to the other members.
* **Ephemeral** (no group): ``XREAD`` from the last entry id at subscribe time.
* **Reconnect**: readers, ack flushes and publishes retry transient errors with
  capped exponential backoff (``reconnect_max_delay``); nothing Redis acknowledged
  is lost as long as Redis itself keeps it (AOF/RDB persistence on the server).

See :class:`~eventmill.pubsub.redis.RedisConfig` for every option and
``docs/readme/redis.md`` for the guarantees.
"""

from eventmill.pubsub.redis._pubsub import PublishStats, RedisConfig, RedisPubSub

__all__ = ["PublishStats", "RedisConfig", "RedisPubSub"]
