"""SQL of the postgresql:// backend: the schema and every statement it runs.

Tables (``<prefix>`` defaults to ``eventmill_``, in a configurable schema):

* ``<prefix>topics``: one row per topic name, giving it a small integer id ``tid``.
* ``<prefix>messages``: the durable log, keyed ``(tid, seq)`` (its only index: every
  lookup knows the topic). ``seq`` is a bigint identity; it orders messages but is
  *not* the commit order (sequence values are taken before commit, so concurrent
  transactions commit them out of order). Tables created by earlier versions (key
  ``seq`` plus an index on ``(tid, seq)``) work unchanged with these statements.
* ``<prefix>groups``: one row per (topic, consumer group), id ``gid``.
* ``<prefix>deliveries``: the work queue of every group: one row per (group,
  message) not yet acknowledged, with its lease (``visible_at``, ``lease``).

Why per-group delivery rows instead of a per-group cursor: a cursor "seq > last"
skips a row whose transaction took its seq early and committed late. Here every
publish inserts its delivery rows in the same transaction as its messages, so a
row becomes claimable exactly when it commits, whatever its seq. Members of a
group claim rows with ``FOR UPDATE SKIP LOCKED`` and lease them; an ack deletes
the row; a nack or an expired lease makes it claimable again.

Publishing is one binary ``COPY`` into ``<prefix>messages`` (committed implicitly;
:attr:`Sql.publish` is the same as an INSERT); the statement trigger
``<prefix>fan_out`` (which fires for ``COPY`` as for ``INSERT``) inserts the delivery rows
and sends the NOTIFY in the same transaction. Creating a group must not miss a
message being published at the same moment: the trigger takes a *shared*
transaction-level advisory lock on each topic before it reads the groups (in a
new snapshot), and group creation an *exclusive* one before it backfills, so a
publish either commits before the backfill reads the messages (and is copied) or
sees the new group (and inserts its rows itself) - never neither, never both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

__all__ = ["Sql", "lock_class"]


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

    @cached_property
    def lock_class(self) -> int:
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
        t, m, g, d = (self.table(x) for x in ("topics", "messages", "groups", "deliveries"))
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
    seq bigint GENERATED ALWAYS AS IDENTITY,
    msg_id text NOT NULL,
    metadata text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tid, seq)
);
CREATE TABLE IF NOT EXISTS {g} (
    gid integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tid integer NOT NULL,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tid, name)
);
CREATE TABLE IF NOT EXISTS {d} (
    gid integer NOT NULL,
    seq bigint NOT NULL,
    visible_at timestamptz NOT NULL DEFAULT now(),
    lease integer NOT NULL DEFAULT 0,
    PRIMARY KEY (gid, seq)
) WITH (fillfactor = 80);
CREATE OR REPLACE FUNCTION "{self.schema}"."{p}fan_out"() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT n.tid, min(n.seq) AS lo, max(n.seq) AS hi, count(*) AS cnt
        FROM new_rows AS n GROUP BY n.tid ORDER BY n.tid
    LOOP
        -- Shared lock per topic; group creation takes it exclusively (see module doc).
        PERFORM pg_advisory_xact_lock_shared({self.lock_class}, r.tid);
        -- NOTIFY (sent at commit) names the committed seqs: a range, or lists of <= 300.
        IF r.hi - r.lo + 1 = r.cnt THEN
            PERFORM pg_notify(
                '{self.channel_prefix}' || r.tid, r.tid || ':' || r.lo || '-' || r.hi
            );
        ELSE
            PERFORM pg_notify('{self.channel_prefix}' || r.tid, r.tid || ':' || x.seqs)
            FROM (
                SELECT string_agg(n.seq::text, ',') AS seqs FROM new_rows AS n
                WHERE n.tid = r.tid GROUP BY (n.seq - r.lo) / 300
            ) AS x;
        END IF;
    END LOOP;
    -- A new statement: its snapshot includes every group committed before the locks.
    INSERT INTO {d} (gid, seq)
    SELECT g.gid, n.seq FROM new_rows AS n JOIN {g} AS g ON g.tid = n.tid;
    RETURN NULL;
END
$fn$;
CREATE OR REPLACE TRIGGER "{p}fan_out" AFTER INSERT ON {m}
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION "{self.schema}"."{p}fan_out"();
"""

    @cached_property
    def drop(self) -> str:
        """Drop the four tables (tests and tools; not used by the backend)."""
        names = ", ".join(self.table(x) for x in ("topics", "messages", "groups", "deliveries"))
        fn = f'"{self.schema}"."{self.prefix}fan_out"()'
        return f"DROP TABLE IF EXISTS {names}; DROP FUNCTION IF EXISTS {fn}"

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
        return (
            f"INSERT INTO {self.table('groups')} (tid, name) VALUES ($1, $2) "
            "ON CONFLICT (tid, name) DO NOTHING RETURNING gid"
        )

    @cached_property
    def backfill_group(self) -> str:
        """Give a new group a delivery row for every retained message (``replay``)."""
        return (
            f"INSERT INTO {self.table('deliveries')} (gid, seq) "
            f"SELECT $1, seq FROM {self.table('messages')} WHERE tid = $2"
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
        """Insert messages of any topics (the ``fan_out`` trigger does the rest).

        The backend itself publishes with a binary ``COPY`` into the same columns,
        which fires the same trigger and numbers rows in the same order (cheaper to
        encode); this statement is the equivalent in SQL.
        """
        return f"""
INSERT INTO {self.table("messages")} (tid, msg_id, metadata, payload)
SELECT u.t, u.i, u.m, u.p
FROM unnest($1::int[], $2::text[], $3::text[], $4::bytea[]) WITH ORDINALITY AS u(t, i, m, p, o)
ORDER BY u.o"""

    # -- consume ------------------------------------------------------------------------

    @cached_property
    def claim(self) -> str:
        """Lease up to $2 visible deliveries of group $1 (of topic $4) for $3 seconds.

        Returns ``(seq, lease, msg_id, metadata, payload)`` rows, oldest seq first.

        Walks the primary key (gid, seq) in order, skipping rows leased by others
        (future ``visible_at``: at most the prefetch of the group's live members) and
        rows being claimed right now (SKIP LOCKED). ``visible_at`` is not indexed, so
        leasing and renewing are HOT updates.
        """
        m, d = self.table("messages"), self.table("deliveries")
        return f"""
WITH c AS (
    SELECT seq FROM {d}
    WHERE gid = $1 AND visible_at <= now()
    ORDER BY seq
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), u AS (
    UPDATE {d} AS d
    SET visible_at = now() + make_interval(secs => $3), lease = d.lease + 1
    WHERE d.gid = $1 AND d.seq = ANY(ARRAY(SELECT seq FROM c))
    RETURNING d.seq, d.lease
)
SELECT u.seq, u.lease, m.msg_id, m.metadata, m.payload
FROM u LEFT JOIN {m} AS m ON m.tid = $4 AND m.seq = u.seq
ORDER BY u.seq"""

    @cached_property
    def next_visible(self) -> str:
        """Seconds until the earliest lease of group $1 expires (NULL when none)."""
        return (
            "SELECT EXTRACT(EPOCH FROM min(visible_at) - now())::float8 "
            f"FROM {self.table('deliveries')} WHERE gid = $1"
        )

    @cached_property
    def ack(self) -> str:
        """Delete the deliveries $2 (seqs) of group $1."""
        return f"DELETE FROM {self.table('deliveries')} WHERE gid = $1 AND seq = ANY($2::bigint[])"

    @cached_property
    def set_visibility(self) -> str:
        """Make leases of group $1 ($2 seqs, $3 leases) visible again in $4 seconds (0: now).

        Used for nack and release (0) and to renew live leases (the visibility
        timeout). A lease that changed hands meanwhile (``lease`` differs) is left alone.
        """
        return (
            f"UPDATE {self.table('deliveries')} "
            "SET visible_at = now() + make_interval(secs => $4) "
            "WHERE gid = $1 AND seq = ANY($2::bigint[]) "
            "AND (seq, lease) IN (SELECT * FROM unnest($2::bigint[], $3::int[]))"
        )

    @cached_property
    def fetch_messages(self) -> str:
        """The messages (topic $1[i], seq $2[i]) (ephemeral subscriptions), in seq order."""
        return (
            f"SELECT m.seq, m.msg_id, m.metadata, m.payload "
            f"FROM unnest($1::int[], $2::bigint[]) AS w(t, s) "
            f"JOIN {self.table('messages')} AS m ON m.tid = w.t AND m.seq = w.s "
            "ORDER BY m.seq"
        )

    # -- retention ----------------------------------------------------------------------

    @cached_property
    def retention(self) -> str:
        """Delete up to $2 messages older than $1 seconds that no group still has to consume."""
        m, g, d = self.table("messages"), self.table("groups"), self.table("deliveries")
        return f"""
DELETE FROM {m} WHERE (tid, seq) IN (
    SELECT x.tid, x.seq FROM {m} AS x
    WHERE x.created_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (
          SELECT 1 FROM {d} AS d JOIN {g} AS g ON g.gid = d.gid
          WHERE g.tid = x.tid AND d.seq = x.seq
      )
    ORDER BY x.tid, x.seq
    LIMIT $2
)"""
