"""kafka://host:port - Apache Kafka (or any Kafka-protocol broker) through aiokafka.

Publishing: batching producers (``acks=all``; ``producers`` of them, default 1);
each partition is always written by the same producer, so order per partition
holds. ``publish`` returns after the broker acknowledged every record of the call.
A message's partition comes from its metadata field ``KafkaConfig.key`` (default
``partition_key``), hashed like Kafka's default partitioner (murmur2), so messages
with the same key keep their order. Messages without the key: all of one ``publish``
call go to one partition (round robin between calls), so they keep their order too.
``Message.id`` travels in the header ``eventmill.id``, the metadata in further
headers. Topics are created on first use with ``KafkaConfig.partitions`` partitions.
A publish that meets a lost connection is retried with capped backoff for up to
``publish_timeout`` seconds (a record may then be stored twice; receivers drop
duplicates by id), then fails with :class:`~eventmill.PublishError`.

Consuming with a group (``subscribe`` returns once the join completed): a Kafka
consumer group with manual commits, starting at the earliest offset when new.
Offsets are committed only up to the first unacked message of each partition. On a
graceful close, unacked messages below acked ones are re-published (copies with the
same id) before the commit moves past them, so the next member gets exactly the
unacked messages; after a crash it gets each partition's tail from its first unacked
message. A nack puts the message back at the front of the member's local queue (the
commit point stays at it). Subscriptions one ``KafkaPubSub`` opens for the same topic
and group share one group member (one aiokafka consumer) and split its messages.
On a rebalance, revoked partitions' acked prefix is committed and their in-flight
messages are dropped (acks for them become no-ops; the new owner gets them again).

Consuming without a group: a group-less consumer assigned to every partition at its
end (resolved from a fetch's high watermark) before ``subscribe`` returns.

Reconnect: aiokafka reconnects by itself; fetches, commits and publishes that fail
are retried with backoff capped at ``reconnect_max_delay`` seconds.

URL options: ``kafka://host:port[,host2:port2]?key=user_id&partitions=8`` and the
other fields of :class:`KafkaConfig`.
"""

from eventmill.pubsub.kafka._pubsub import KafkaConfig, KafkaPubSub

__all__ = ["KafkaConfig", "KafkaPubSub"]
