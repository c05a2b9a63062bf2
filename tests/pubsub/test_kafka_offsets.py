"""PartitionOffsets: the commit point never passes an unacked offset (no broker needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eventmill.pubsub.kafka._offsets import PartitionOffsets


@given(
    offsets=st.lists(st.integers(0, 500), min_size=1, max_size=60, unique=True).map(sorted),
    data=st.data(),
)
def test_commit_point_is_the_first_unacked_offset(offsets: list[int], data: st.DataObject) -> None:
    po = PartitionOffsets()
    for o in offsets:
        assert po.track(o)
    order = data.draw(st.permutations(offsets))
    n_acks = data.draw(st.integers(0, len(offsets)))
    acked: set[int] = set()
    for o in order[:n_acks]:
        po.ack(o)
        acked.add(o)
        unacked = [x for x in offsets if x not in acked]
        if not acked or (unacked and unacked[0] == offsets[0]):
            assert po.commit_to is None
        elif unacked:
            assert po.commit_to == unacked[0]
        else:
            assert po.commit_to == offsets[-1] + 1
        assert len(po) == len(unacked)


def test_holes_are_the_unacked_offsets_below_the_highest_ack() -> None:
    po = PartitionOffsets()
    for o in range(10, 20):
        po.track(o)
    for o in (10, 11, 14, 17):
        po.ack(o)
    assert po.commit_to == 12
    holes, after = po.holes()
    assert (holes, after) == ([12, 13, 15, 16], 18)
    po.skip_to(18)
    assert po.commit_to == 18
    assert len(po) == 2  # 18 and 19 are still tracked and unacked
    po.ack(19)
    assert po.commit_to == 18
    po.ack(18)
    assert po.commit_to == 20


def test_offsets_not_above_the_last_are_ignored() -> None:
    po = PartitionOffsets()
    assert po.track(5)
    assert not po.track(5)
    assert not po.track(3)
    po.ack(5)
    assert po.commit_to == 6
    assert not po.track(4)
    assert po.track(6)
