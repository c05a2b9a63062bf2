"""Per-partition bookkeeping for kafka://: which offsets may be committed.

Kafka stores one position per partition and group, so a consumer that settles
messages out of order may only commit up to the first message it has not acked.
:class:`PartitionOffsets` tracks the offsets handed out from one partition (in
fetch order, which is offset order) and the contiguous acked prefix.
"""

from __future__ import annotations

from collections import deque

__all__ = ["PartitionOffsets"]


class PartitionOffsets:
    """Offsets fetched from one partition during one assignment.

    * :meth:`track` registers a fetched offset (offsets arrive in increasing order).
    * :meth:`ack` marks one acked; the commit point then moves past every acked
      offset at the head, and stops at the first offset not acked yet.
    * ``commit_to`` is the offset to commit (Kafka's "next offset to read"), or
      ``None`` before anything was acked; ``committed`` is what the broker last
      confirmed. ``dropped`` becomes true when the partition is revoked or the
      consumer closes: its state is then ignored (late acks are no-ops).
    """

    __slots__ = ("_acked", "_pending", "commit_to", "committed", "dropped")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._acked: set[int] = set()
        self.commit_to: int | None = None
        self.committed: int | None = None
        self.dropped = False

    def __len__(self) -> int:
        """Number of tracked offsets not yet acked (held, queued or nacked)."""
        return len(self._pending) - len(self._acked)

    def track(self, offset: int) -> bool:
        """Register a fetched offset; ``False`` (and ignored) if not above the last one."""
        pending = self._pending
        if pending and offset <= pending[-1]:
            return False
        if not pending and self.commit_to is not None and offset < self.commit_to:
            return False
        pending.append(offset)
        return True

    def ack(self, offset: int) -> bool:
        """Mark ``offset`` acked; return ``True`` if the commit point moved."""
        pending = self._pending
        if not pending or offset < pending[0]:
            return False
        if offset != pending[0]:
            self._acked.add(offset)
            return False
        acked = self._acked
        last = pending.popleft()
        while pending and pending[0] in acked:
            acked.discard(pending[0])
            last = pending.popleft()
        self.commit_to = pending[0] if pending else last + 1
        return True

    def holes(self) -> tuple[list[int], int | None]:
        """Unacked offsets below the highest acked one, and the offset after that one.

        ``([], None)`` when every acked offset is in the committed prefix. A
        graceful close re-publishes the holes and then commits past them
        (:meth:`skip_to`), so a restart redelivers exactly the unacked messages.
        """
        if not self._acked:
            return [], None
        high = max(self._acked)
        acked = self._acked
        return [o for o in self._pending if o < high and o not in acked], high + 1

    def skip_to(self, offset: int) -> None:
        """Move the commit point to ``offset`` (everything below is settled or copied)."""
        pending = self._pending
        while pending and pending[0] < offset:
            self._acked.discard(pending.popleft())
        self.commit_to = offset

    @property
    def needs_commit(self) -> bool:
        """Whether the commit point is ahead of what the broker confirmed."""
        return self.commit_to is not None and self.commit_to != self.committed
