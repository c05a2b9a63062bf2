"""The one backoff of the backends' retry loops: capped, doubling, jittered, resettable."""

from __future__ import annotations

from eventmill.pubsub._backoff import Backoff


def test_delays_double_from_first_up_to_the_cap_within_their_upper_half() -> None:
    backoff = Backoff(cap=1.0, first=0.1)
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for ceiling in ceilings:
        delay = backoff.next()
        assert ceiling / 2 <= delay <= ceiling


def test_reset_starts_over_at_first() -> None:
    backoff = Backoff(cap=2.0, first=0.05)
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert 0.025 <= backoff.next() <= 0.05


def test_delays_are_jittered() -> None:
    delays = {Backoff(cap=2.0, first=1.0).next() for _ in range(50)}
    assert len(delays) > 1
    assert all(0.5 <= d <= 1.0 for d in delays)


def test_delay_after_n_failures_is_stateless_and_capped() -> None:
    backoff = Backoff(cap=2.0, first=0.1)
    assert 0.05 <= backoff.delay(0) <= 0.1
    assert 1.0 <= backoff.delay(1000) <= 2.0  # reconnect counters can grow large
    assert 0.05 <= backoff.next() <= 0.1  # delay() did not count as failures


def test_a_first_delay_above_the_cap_is_capped() -> None:
    assert Backoff(cap=0.5, first=5.0).next() <= 0.5
