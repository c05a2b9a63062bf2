"""SQL of the postgresql:// backend: the schema and every statement it runs.

Tables (``<prefix>`` defaults to ``eventmill_``, in a configurable schema):

* ``<prefix>topics``: one row per topic name, giving it a small integer id ``tid``.
* ``<prefix>messages``: the durable log. Every row records the id of the transaction
  that wrote it (``txid``, an ``xid8``) beside its ``seq`` (a bigint identity); its
  only index is the primary key ``(tid, txid, seq)``, the *commit order* of the log.
  Within a transaction seqs increase; across transactions they mean nothing (each
  connection takes them from its own cached range).
* ``<prefix>groups``: one row per (topic, consumer group), id ``gid``, with the
  group's cursor ``(cur_txid, cur_seq)``: every message at or below it has been handed
  to a member of the group (and is acknowledged, or covered by a lease).
* ``<prefix>leases``: the batches members of a group hold: a key range of the log
  (``lo`` .. ``hi``), a visibility deadline, a counter bumped each time the batch
  changes hands, and the seqs of the range already acknowledged.

Why the cursor is safe (the approach of PgQ and Watermill's PostgreSQL adapter): a
``seq`` is taken before commit, so concurrent transactions commit seqs out of order,
and a cursor on ``seq`` alone would skip a row committed late. A consumer instead only
reads rows whose ``txid`` is below ``pg_snapshot_xmin`` of its snapshot: every
transaction with a smaller id has ended, so no row can ever appear below that bound
again, and ``(txid, seq)`` order is final there. The price: a transaction that wrote
and stays open (anywhere in the cluster) holds back delivery of rows committed after
it started, until it ends.

Every read of the log has the form ``tid = $1 AND (txid, seq) > cursor`` (claims and
ephemeral reads add ``AND txid < horizon``; retention bounds it by the slowest group's
cursor instead). With the equality on the key's first column, PostgreSQL's btree starts
the scan at the cursor (the row comparison on the next two columns) and ends it at the
horizon, so a read behind a long retained log costs what it costs on a short one. Two
forms that look equivalent are not: a row comparison over the whole key beside
``tid = $1`` starts the scan at the topic's first message (the equality wins the start
position) and made the first plans of a session sort the whole topic; and a row
comparison as an upper bound ends a scan only when its first column decides. Test:
``test_reads_past_a_long_consumed_log_touch_only_its_end``.

Claiming (:attr:`Sql.ddl`, function ``<prefix>claim``) hands a member either an
expired lease (a crashed member's batch, a released one, or a nacked message) or
the next ``prefetch`` rows after the cursor: it moves the cursor past them and
records them as one new lease, in one statement. Acknowledging a whole batch deletes
its lease; a nack moves the message into a lease of its own, visible at once. Members
of one group take their turns on a transaction-level advisory lock per group.

Publishing is one binary ``COPY`` into ``<prefix>messages`` (committed implicitly;
:attr:`Sql.publish` is the same as an INSERT). The publishing process then wakes its
own consumers of the topic directly, and other processes' with a NOTIFY on the
topic's channel (coalesced: at most one per topic every few milliseconds). A NOTIFY
is only a wake-up: what to read is always decided by the cursors above, so a NOTIFY
lost (a process killed between commit and NOTIFY, a LISTEN connection down) delays
delivery until the next wake-up or ``poll_interval``, and loses nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

__all__ = ["Sql", "lock_class"]

_TABLES = ("topics", "messages", "groups", "leases")
_XID8_MAX = 2**64 - 1  # bounds meaning "no bound" in row comparisons
_BIGINT_MAX = 2**63 - 1


def lock_class(schema: str, prefix: str) -> int:
    """A 31-bit advisory-lock namespace for one (schema, prefix) pair."""
    digest = hashlib.sha1(f"eventmill:{schema}:{prefix}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class Sql:
    """Statements for one schema and table prefix (both validated identifiers)."""

    schema: str
    prefix: str

    def table(self, name: str) -> str:
        return f'"{self.schema}"."{self.prefix}{name}"'

    def function(self, name: str) -> str:
        return f'"{self.schema}"."{self.prefix}{name}"'

    @cached_property
    def lock_class(self) -> int:
        """Advisory-lock class: key 0 guards DDL, ``lock_class ^ 1`` retention,
        ``lock_class ^ 2`` the claims of each group (key ``gid``)."""
        return lock_class(self.schema, self.prefix)

    @cached_property
    def channel_prefix(self) -> str:
        return f"eventmill_{self.lock_class:x}_"

    def channel(self, tid: int) -> str:
        """The LISTEN/NOTIFY channel of topic ``tid`` (unique per schema and prefix)."""
        return f"{self.channel_prefix}{tid}"

    # -- schema -------------------------------------------------------------------------

    @cached_property
    def ddl(self) -> str:
        t, m, g, le = (self.table(x) for x in _TABLES)
        p = self.prefix
        return f"""
CREATE SCHEMA IF NOT EXISTS "{self.schema}";
CREATE TABLE IF NOT EXISTS {t} (
    tid integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {m} (
    tid integer NOT NULL,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq bigint GENERATED ALWAYS AS IDENTITY (CACHE 1000),
    msg_id text NOT NULL,
    metadata text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tid, txid, seq)
);
CREATE TABLE IF NOT EXISTS {g} (
    gid integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tid integer NOT NULL,
    name text NOT NULL,
    cur_txid xid8 NOT NULL DEFAULT '0',
    cur_seq bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tid, name)
);
CREATE TABLE IF NOT EXISTS {le} (
    lid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gid integer NOT NULL,
    lo_txid xid8 NOT NULL,
    lo_seq bigint NOT NULL,
    hi_txid xid8 NOT NULL,
    hi_seq bigint NOT NULL,
    visible_at timestamptz NOT NULL,
    lease integer NOT NULL DEFAULT 1,
    acked bigint[] NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS "{p}leases_gid" ON {le} (gid);
CREATE OR REPLACE FUNCTION {self.function("claim")}(
    p_gid integer, p_tid integer, p_limit integer, p_secs float8
) RETURNS TABLE (
    lid bigint, lease integer, txid xid8, seq bigint, msg_id text, metadata text, payload bytea
)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    l record;
    c_txid xid8;
    c_seq bigint;
    horizon xid8;
BEGIN
    -- 1. An expired lease: a crashed or closed member's batch, or a nacked message.
    LOOP
        UPDATE {le} AS x
        SET visible_at = now() + make_interval(secs => p_secs), lease = x.lease + 1
        WHERE x.lid = (
            SELECT y.lid FROM {le} AS y
            WHERE y.gid = p_gid AND y.visible_at <= now()
            ORDER BY y.visible_at LIMIT 1 FOR UPDATE SKIP LOCKED
        )
        RETURNING x.lid, x.lease, x.lo_txid, x.lo_seq, x.hi_txid, x.hi_seq, x.acked INTO l;
        EXIT WHEN NOT FOUND;
        RETURN QUERY
        SELECT l.lid, l.lease, m.txid, m.seq, m.msg_id, m.metadata, m.payload
        FROM {m} AS m
        WHERE m.tid = p_tid
          AND (m.txid, m.seq) >= (l.lo_txid, l.lo_seq)
          AND (m.txid, m.seq) <= (l.hi_txid, l.hi_seq)
          AND m.seq <> ALL (l.acked)
        ORDER BY m.txid, m.seq;
        IF FOUND THEN
            RETURN;
        END IF;
        DELETE FROM {le} AS x WHERE x.lid = l.lid;  -- nothing left in it
    END LOOP;
    -- 2. The next rows after the group's cursor, one member of the group at a time.
    PERFORM pg_advisory_xact_lock({self.lock_class ^ 2}, p_gid);
    SELECT g.cur_txid, g.cur_seq INTO c_txid, c_seq FROM {g} AS g WHERE g.gid = p_gid;
    -- Every transaction below the horizon has ended: no row can appear below it.
    horizon := pg_snapshot_xmin(pg_current_snapshot());
    RETURN QUERY
    WITH b AS (
        SELECT m.txid, m.seq, m.msg_id, m.metadata, m.payload
        FROM {m} AS m
        WHERE m.tid = p_tid AND (m.txid, m.seq) > (c_txid, c_seq) AND m.txid < horizon
        ORDER BY m.tid, m.txid, m.seq
        LIMIT p_limit
    ), lo AS (
        SELECT b.txid, b.seq FROM b ORDER BY b.txid, b.seq LIMIT 1
    ), hi AS (
        SELECT b.txid, b.seq FROM b ORDER BY b.txid DESC, b.seq DESC LIMIT 1
    ), moved AS (
        UPDATE {g} AS g SET cur_txid = hi.txid, cur_seq = hi.seq FROM hi WHERE g.gid = p_gid
    ), fresh AS (
        INSERT INTO {le} (gid, lo_txid, lo_seq, hi_txid, hi_seq, visible_at)
        SELECT p_gid, lo.txid, lo.seq, hi.txid, hi.seq, now() + make_interval(secs => p_secs)
        FROM lo, hi
        RETURNING {le}.lid
    )
    SELECT fresh.lid, 1, b.txid, b.seq, b.msg_id, b.metadata, b.payload
    FROM b, fresh ORDER BY b.txid, b.seq;
END
$fn$;
"""

    @cached_property
    def check_layout(self) -> str:
        """Whether the messages table has this version's layout (a ``txid`` column)."""
        return (
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2 AND column_name = 'txid'"
        )

    @cached_property
    def drop(self) -> str:
        """Drop the tables and functions (tests and tools; not used by the backend)."""
        names = ", ".join(self.table(x) for x in _TABLES)
        return (
            f"DROP TABLE IF EXISTS {names}; "
            f"DROP FUNCTION IF EXISTS {self.function('claim')}(integer, integer, integer, float8)"
        )

    # -- topics and groups --------------------------------------------------------------

    @cached_property
    def select_topic(self) -> str:
        return f"SELECT tid FROM {self.table('topics')} WHERE name = $1"

    @cached_property
    def insert_topic(self) -> str:
        return (
            f"INSERT INTO {self.table('topics')} (name) VALUES ($1) "
            "ON CONFLICT (name) DO NOTHING RETURNING tid"
        )

    @cached_property
    def select_group(self) -> str:
        return f"SELECT gid FROM {self.table('groups')} WHERE tid = $1 AND name = $2"

    @cached_property
    def insert_group(self) -> str:
        """A new group's cursor is at the start: it replays every retained message."""
        return (
            f"INSERT INTO {self.table('groups')} (tid, name) VALUES ($1, $2) "
            "ON CONFLICT (tid, name) DO NOTHING RETURNING gid"
        )

    # -- publish ------------------------------------------------------------------------

    @cached_property
    def messages_table(self) -> str:
        """The unquoted name of the messages table (for ``COPY``; see :attr:`copy_columns`)."""
        return f"{self.prefix}messages"

    #: Columns the backend's ``COPY`` fills, in record order.
    copy_columns = ("tid", "msg_id", "metadata", "payload")

    @cached_property
    def publish(self) -> str:
        """Insert messages of any topics.

        The backend itself publishes with a binary ``COPY`` into the same columns,
        which numbers rows in the same order (cheaper to encode); this statement is
        the equivalent in SQL.
        """
        return f"""
INSERT INTO {self.table("messages")} (tid, msg_id, metadata, payload)
SELECT u.t, u.i, u.m, u.p
FROM unnest($1::int[], $2::text[], $3::text[], $4::bytea[]) WITH ORDINALITY AS u(t, i, m, p, o)
ORDER BY u.o"""

    @cached_property
    def publish_in_transaction(self) -> str:
        """:meth:`in_transaction` with asyncpg's ``$n`` parameters."""
        return self.in_transaction("$")

    @cached_property
    def publish_in_transaction_named(self) -> str:
        """:meth:`in_transaction` with SQLAlchemy's named parameters."""
        return self.in_transaction(":")

    def in_transaction(self, style: str) -> str:
        """Insert messages of one topic in the caller's transaction, and NOTIFY the topic's
        channel: PostgreSQL delivers the NOTIFY when the transaction commits, and drops
        it on rollback, so consumers everywhere (this process's too) wake after the
        commit and never for a rolled-back message.

        ``style="$"``: asyncpg's ``$n`` parameters (``tids, ids, metas, payloads, channel,
        note``); ``style=":"``: SQLAlchemy's named ones, of the same names.
        """
        names = ("tids", "ids", "metas", "payloads", "channel", "note")
        p = [f"${n}" for n in range(1, 7)] if style == "$" else [f":{n}" for n in names]
        return f"""
WITH ins AS (
INSERT INTO {self.table("messages")} (tid, msg_id, metadata, payload)
SELECT u.t, u.i, u.m, u.p
FROM unnest(CAST({p[0]} AS int[]), CAST({p[1]} AS text[]), CAST({p[2]} AS text[]),
            CAST({p[3]} AS bytea[])) WITH ORDINALITY AS u(t, i, m, p, o)
ORDER BY u.o)
SELECT pg_notify(CAST({p[4]} AS text), CAST({p[5]} AS text))"""

    # -- consume ------------------------------------------------------------------------

    @cached_property
    def claim(self) -> str:
        """Lease up to $3 messages of group $1 (topic $2) for $4 seconds.

        Returns ``(lid, lease, txid, seq, msg_id, metadata, payload)`` rows of one
        lease, in commit order (see the module docstring and ``<prefix>claim``).
        """
        return f"SELECT * FROM {self.function('claim')}($1, $2, $3, $4)"

    @cached_property
    def idle_state(self) -> str:
        """For a group $1 whose claim found nothing: seconds until its earliest lease
        expires (NULL when none), and whether committed messages wait behind the
        horizon (an older transaction still open)."""
        m, g, le = self.table("messages"), self.table("groups"), self.table("leases")
        return f"""
SELECT
    (SELECT EXTRACT(EPOCH FROM min(l.visible_at) - now())::float8 FROM {le} AS l
     WHERE l.gid = $1),
    EXISTS (
        SELECT 1 FROM {g} AS g CROSS JOIN LATERAL (
            SELECT 1 FROM {m} AS m
            WHERE m.tid = g.tid AND (m.txid, m.seq) > (g.cur_txid, g.cur_seq)
            ORDER BY m.tid, m.txid, m.seq LIMIT 1
        ) AS after_cursor
        WHERE g.gid = $1
    )"""

    @cached_property
    def oldest_writer(self) -> str:
        """The backend holding the horizon back: pid, seconds open, state (no query text)."""
        return (
            "SELECT pid, EXTRACT(EPOCH FROM now() - xact_start)::float8, state "
            "FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
            "ORDER BY age(backend_xid) DESC LIMIT 1"
        )

    @cached_property
    def delete_leases(self) -> str:
        """Delete leases ($1 lids, $2 lease counters) still held under those counters."""
        return (
            f"DELETE FROM {self.table('leases')} "
            "WHERE lid = ANY($1::bigint[]) "
            "AND (lid, lease) IN (SELECT * FROM unnest($1::bigint[], $2::int[]))"
        )

    @cached_property
    def update_leases(self) -> str:
        """For leases ($1 lids, $2 counters) still held: add acked seqs ($3 lids, $4
        seqs) and set the deadline $5 seconds from now (0: visible again at once)."""
        return f"""
UPDATE {self.table("leases")} AS l
SET visible_at = now() + make_interval(secs => $5),
    acked = l.acked || coalesce(
        (SELECT array_agg(a.s) FROM unnest($3::bigint[], $4::bigint[]) AS a(id, s)
         WHERE a.id = l.lid), '{{}}')
WHERE l.lid = ANY($1::bigint[])
  AND (l.lid, l.lease) IN (SELECT * FROM unnest($1::bigint[], $2::int[]))"""

    @cached_property
    def nack(self) -> str:
        """Move nacked messages into leases of their own, visible at once.

        $1 lids, $2 lease counters, $3 txids, $4 seqs, one entry per message; only
        messages of leases still held under those counters move (a lease that changed
        hands is redelivered whole). The old lease records them as settled.
        """
        le = self.table("leases")
        return f"""
WITH n AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::xid8[], $4::bigint[])
        AS n(lid, lease, txid, seq)
), held AS (
    UPDATE {le} AS l SET acked = l.acked || (SELECT array_agg(n.seq) FROM n WHERE n.lid = l.lid)
    WHERE l.lid = ANY($1::bigint[]) AND (l.lid, l.lease) IN (SELECT n.lid, n.lease FROM n)
    RETURNING l.lid, l.gid
)
INSERT INTO {le} (gid, lo_txid, lo_seq, hi_txid, hi_seq, visible_at)
SELECT held.gid, n.txid, n.seq, n.txid, n.seq, now()
FROM n JOIN held ON held.lid = n.lid"""

    @cached_property
    def snapshot(self) -> str:
        """The current snapshot as (xmin, xmax, in-progress txids)."""
        return (
            "SELECT pg_snapshot_xmin(s), pg_snapshot_xmax(s), ARRAY(SELECT pg_snapshot_xip(s)) "
            "FROM (SELECT pg_current_snapshot() AS s) AS x"
        )

    @cached_property
    def read_after(self) -> str:
        """Up to $4 messages of topic $1 after key ($2 txid, $3 seq), below the horizon
        (ephemeral subscriptions): ``(txid, seq, msg_id, metadata, payload)``."""
        return f"""
SELECT m.txid, m.seq, m.msg_id, m.metadata, m.payload
FROM {self.table("messages")} AS m
WHERE m.tid = $1 AND (m.txid, m.seq) > ($2::xid8, $3)
  AND m.txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY m.tid, m.txid, m.seq
LIMIT $4"""

    @cached_property
    def exists_after(self) -> str:
        """Whether committed messages of topic $1 follow key ($2 txid, $3 seq)."""
        return f"""
SELECT count(*) > 0 FROM (
    SELECT 1 FROM {self.table("messages")} AS m
    WHERE m.tid = $1 AND (m.txid, m.seq) > ($2::xid8, $3)
    ORDER BY m.tid, m.txid, m.seq LIMIT 1
) AS after_cursor"""

    # -- retention ----------------------------------------------------------------------

    @cached_property
    def retention(self) -> str:
        """Delete up to $2 messages older than $1 seconds that no group still has to consume.

        A message is done for a group once the group's cursor is past it and no lease
        of the group covers it unacknowledged. Per topic, only the start of the log is
        read: up to the slowest group's cursor and the first message still within
        retention, whichever comes first (a pass over a long log with nothing to
        delete reads a few index pages per topic, not the log).
        """
        t, m, g, le = (self.table(x) for x in _TABLES)
        return f"""
DELETE FROM {m} WHERE (tid, txid, seq) IN (
    SELECT x.tid, x.txid, x.seq
    FROM {t} AS t
    LEFT JOIN LATERAL (  -- the topic's slowest group: nothing after its cursor may go
        SELECT g.cur_txid, g.cur_seq FROM {g} AS g WHERE g.tid = t.tid
        ORDER BY g.cur_txid, g.cur_seq LIMIT 1
    ) AS slow ON true
    LEFT JOIN LATERAL (  -- the first message before it that is still within retention
        SELECT y.txid, y.seq FROM {m} AS y
        WHERE y.tid = t.tid
          AND (y.txid, y.seq) <= (coalesce(slow.cur_txid, '{_XID8_MAX}'::xid8),
                                  coalesce(slow.cur_seq, {_BIGINT_MAX}))
          AND y.created_at >= now() - make_interval(secs => $1)
        ORDER BY y.tid, y.txid, y.seq LIMIT 1
    ) AS young ON true
    CROSS JOIN LATERAL (
        SELECT x.tid, x.txid, x.seq FROM {m} AS x
        WHERE x.tid = t.tid
          AND (x.txid, x.seq) <= (coalesce(slow.cur_txid, '{_XID8_MAX}'::xid8),
                                  coalesce(slow.cur_seq, {_BIGINT_MAX}))
          AND (x.txid, x.seq) < (coalesce(young.txid, '{_XID8_MAX}'::xid8),
                                 coalesce(young.seq, {_BIGINT_MAX}))
          AND x.created_at < now() - make_interval(secs => $1)
          AND NOT EXISTS (
              SELECT 1 FROM {le} AS l JOIN {g} AS g ON g.gid = l.gid
              WHERE g.tid = x.tid
                AND (x.txid, x.seq) >= (l.lo_txid, l.lo_seq)
                AND (x.txid, x.seq) <= (l.hi_txid, l.hi_seq)
                AND x.seq <> ALL (l.acked)
          )
        ORDER BY x.tid, x.txid, x.seq
        LIMIT $2
    ) AS x
    LIMIT $2
)"""
