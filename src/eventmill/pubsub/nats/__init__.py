"""nats:// - NATS JetStream: a stream per topic, a durable pull consumer per group.

Topics and streams: topic ``T`` is published on the subject ``<subject_prefix>T``
(default ``eventmill.T``) and stored in the stream ``<stream_prefix><escaped T>``
(default ``eventmill-T``; ``.`` and ``_`` are escaped as ``_2E`` and ``_5F``, since
stream names cannot contain dots). The stream is created on first use with limits
retention (every group sees every message), or reused if it exists; if another
stream already captures the subject, that stream is used.

Groups: ``subscribe(topic, group=g)`` binds to the durable pull consumer ``g``
(escaped like streams) with ``DeliverPolicy.ALL``, so a new group replays the
stream from its oldest message; members of a group share the consumer and split
the messages. ``subscribe(topic)`` creates an ephemeral consumer with
``DeliverPolicy.NEW`` (it sees what is published after ``subscribe`` returned),
deleted on close and reaped by the server after ``inactive_threshold`` if the
process dies.

Settling: ``ack()`` sends ``+ACK``, ``nack()`` ``-NAK`` (with ``nak_delay``), and
``NatsSubscription.term(msg)`` ``+TERM``; a message not settled within ``ack_wait``
is redelivered, and after ``max_deliver`` deliveries the server stops delivering it.
``close()`` naks what was received but not settled (messages still arriving while
it closes included) and sends the nacks still queued, so the group gets them again
at once; first it has the server drop the subscription's pull requests (a pull
request that answers only after they are gone), since a request left there without
its inbox makes the server (2.9.x) hold a nacked message back until ``ack_wait``
and deliver another one twice (see ``nats._subscription``). Should that request get
no answer, the naks are delayed until the pull requests expired instead (at most
``fetch_timeout`` and a margin).

Publishing: every message gets its PubAck before ``publish`` returns; many
concurrent calls share the connection and their PubAcks are awaited together.
``Message.id`` is sent as ``Nats-Msg-Id`` (``dedupe``), so a message re-sent after
a lost PubAck (server restart) is stored once. ``publish`` retries with capped
backoff for up to ``publish_deadline`` seconds, then raises
:class:`~eventmill.PublishError` (a message may have been stored anyway: nats-py
sends what it buffered during a disconnect once it reconnects).

Reconnect: the client reconnects forever with capped exponential backoff
(``reconnect_min_delay`` doubling up to ``reconnect_max_delay``, with jitter); pulls
and publishes in progress resume by themselves.

URL: ``nats://[user:password@|token@]host:port[,host2:port]?option=value`` (or
``tls://``); options are the fields of :class:`NatsConfig`.
"""

from eventmill.pubsub.nats._pubsub import NatsConfig, NatsPubSub, NatsSubscription

__all__ = ["NatsConfig", "NatsPubSub", "NatsSubscription"]
