"""SQL of the sqlite:// backend: the schema and every statement the writer runs.

Tables (all prefixed ``eventmill_`` so the file can be shared with other data):

* ``messages``: one row per published message. ``seq`` is ``AUTOINCREMENT`` so a
  sequence number is never reused after retention deletes the newest row; since
  SQLite has one writer at a time, ``seq`` order is commit order, which makes a
  group's ``cursor`` (the highest ``seq`` ever handed out) a safe position.
* ``topics``: every topic that has messages (so the retention sweep need not scan).
* ``groups``: one row per (topic, group) with its ``cursor``.
* ``leases``: one row per message handed out to a group and not yet acked.
  ``owner`` is the subscription holding it and ``lease_until`` (ms since the epoch)
  when it comes back if that owner stops renewing; ``lease_until = 0`` with no
  owner means "available now" (nacked or released).
"""

from __future__ import annotations

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS eventmill_messages (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic    TEXT    NOT NULL,
    id       TEXT    NOT NULL,
    metadata BLOB,
    payload  BLOB    NOT NULL,
    created  INTEGER NOT NULL
             DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
CREATE INDEX IF NOT EXISTS eventmill_messages_topic_seq ON eventmill_messages (topic, seq);
CREATE TABLE IF NOT EXISTS eventmill_topics (
    topic TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS eventmill_groups (
    topic  TEXT    NOT NULL,
    grp    TEXT    NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS eventmill_leases (
    topic       TEXT    NOT NULL,
    grp         TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    owner       TEXT,
    lease_until INTEGER NOT NULL,
    PRIMARY KEY (topic, grp, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS eventmill_leases_owner ON eventmill_leases (owner)
    WHERE owner IS NOT NULL;
"""

INSERT_MESSAGE = "INSERT INTO eventmill_messages (topic, id, metadata, payload) VALUES (?, ?, ?, ?)"
#: Row counts of the multi-row INSERTs a batch is cut into (largest first).
INSERT_CHUNKS = (128, 32, 8, 4, 2, 1)


def insert_messages(rows: int) -> str:
    """An INSERT of ``rows`` messages in one statement (one step, one GIL release)."""
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return f"INSERT INTO eventmill_messages (topic, id, metadata, payload) VALUES {values}"


def insert_leases(rows: int) -> str:
    """An INSERT of ``rows`` leases ``(topic, grp, seq, owner, lease_until)``."""
    values = ", ".join(["(?, ?, ?, ?, ?)"] * rows)
    return (
        "INSERT OR REPLACE INTO eventmill_leases (topic, grp, seq, owner, lease_until)"
        f" VALUES {values}"
    )


def ack_leases(rows: int) -> str:
    """A DELETE of ``rows`` leases of one group: parameters topic, group, then the seqs."""
    marks = ", ".join(["?"] * rows)
    return f"DELETE FROM eventmill_leases WHERE topic = ? AND grp = ? AND seq IN ({marks})"


INSERT_TOPIC = "INSERT OR IGNORE INTO eventmill_topics (topic) VALUES (?)"

NACK = (
    "UPDATE eventmill_leases SET owner = NULL, lease_until = 0"
    " WHERE topic = ? AND grp = ? AND seq = ? AND owner = ?"
)
RELEASE = "UPDATE eventmill_leases SET owner = NULL, lease_until = 0 WHERE owner = ?"
RENEW = "UPDATE eventmill_leases SET lease_until = ? WHERE owner = ?"

JOIN_GROUP = "INSERT OR IGNORE INTO eventmill_groups (topic, grp, cursor) VALUES (?, ?, 0)"
GROUP_CURSOR = "SELECT cursor FROM eventmill_groups WHERE topic = ? AND grp = ?"
SET_CURSOR = "UPDATE eventmill_groups SET cursor = ? WHERE topic = ? AND grp = ?"

DUE_LEASES = (
    "SELECT l.seq, m.id, m.metadata, m.payload"
    " FROM eventmill_leases l JOIN eventmill_messages m ON m.seq = l.seq"
    " WHERE l.topic = ? AND l.grp = ? AND l.lease_until <= ?"
    " ORDER BY l.seq LIMIT ?"
)
NEW_MESSAGES = (
    "SELECT seq, id, metadata, payload FROM eventmill_messages"
    " WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?"
)
TAKE_LEASE = (
    "UPDATE eventmill_leases SET owner = ?, lease_until = ? WHERE topic = ? AND grp = ? AND seq = ?"
)
HEAD = "SELECT COALESCE(MAX(seq), 0) FROM eventmill_messages"
#: Move a group's cursor to the end of messages it skips, if nothing of the topic
#: lies between its cursor and the first of them: (end, topic, grp, end, topic, first).
SKIP_AHEAD = (
    "UPDATE eventmill_groups SET cursor = ? WHERE topic = ? AND grp = ? AND cursor < ?"
    " AND NOT EXISTS (SELECT 1 FROM eventmill_messages m"
    " WHERE m.topic = ? AND m.seq > eventmill_groups.cursor AND m.seq < ?)"
)

# -- retention --------------------------------------------------------------------------

ALL_TOPICS = "SELECT topic FROM eventmill_topics"
# Lowest seq some group of the topic still needs (NULL when the topic has no group).
LOW_WATER = (
    "SELECT MIN(COALESCE("
    "  (SELECT MIN(l.seq) FROM eventmill_leases l WHERE l.topic = g.topic AND l.grp = g.grp),"
    "  g.cursor + 1)) FROM eventmill_groups g WHERE g.topic = ?"
)
SWEEP_SETTLED = (
    "DELETE FROM eventmill_messages WHERE seq IN ("
    " SELECT seq FROM eventmill_messages"
    " WHERE topic = ? AND seq < ? AND created <= ? ORDER BY seq LIMIT ?)"
)
EXPIRED_UPTO = (
    "SELECT MAX(seq) FROM (SELECT seq FROM eventmill_messages"
    " WHERE topic = ? AND created <= ? ORDER BY seq LIMIT ?)"
)
SWEEP_EXPIRED = "DELETE FROM eventmill_messages WHERE topic = ? AND seq <= ?"
SWEEP_ORPHAN_LEASES = "DELETE FROM eventmill_leases WHERE topic = ? AND seq <= ?"
