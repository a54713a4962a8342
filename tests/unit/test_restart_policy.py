"""RestartPolicy: backoff 0, base, 2*base … capped; quarantine on too many deaths in a window."""

from __future__ import annotations

from collections import deque

import pytest

from healer.slots import Death, RestartPolicy


def deaths(*ats: float) -> deque[Death]:
    return deque(Death(at=at, exit_code=1, signal=None, ran_for=0.1) for at in ats)


@pytest.mark.parametrize(
    ("consecutive", "delay"),
    [(0, 0.0), (1, 0.0), (2, 0.25), (3, 0.5), (4, 1.0), (5, 2.0), (8, 16.0), (9, 30.0), (50, 30.0)],
)
def test_delay_doubles_from_base_and_is_capped(consecutive: int, delay: float) -> None:
    policy = RestartPolicy(max_restarts=5, window=60.0, backoff_base=0.25, backoff_max=30.0)
    assert policy.delay(consecutive) == delay
    assert isinstance(policy.delay(consecutive), float)


def test_delay_with_another_base_and_cap() -> None:
    policy = RestartPolicy(max_restarts=5, window=60.0, backoff_base=1.0, backoff_max=5.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_delay_stays_capped_after_a_thousand_consecutive_deaths() -> None:
    # Services and servers are never quarantined, and a worker dying every ~30 s never
    # has more than a few deaths in the window, so the count of consecutive deaths grows
    # without bound while the slot crash-loops.
    policy = RestartPolicy(max_restarts=5, window=60.0)
    assert policy.delay(1026) == policy.backoff_max


def test_quarantine_above_max_restarts_within_the_window() -> None:
    policy = RestartPolicy(max_restarts=3, window=60.0)
    now = 1000.0
    assert not policy.should_quarantine(deaths(), now)
    assert not policy.should_quarantine(deaths(990, 995, 999), now)  # 3: at the limit
    assert policy.should_quarantine(deaths(990, 995, 998, 999), now)  # 4: above it


def test_deaths_outside_the_window_do_not_count() -> None:
    policy = RestartPolicy(max_restarts=3, window=60.0)
    now = 1000.0
    history = deaths(100, 200, 300, 939.9, 995, 999)
    assert [d.at for d in policy.counted(history, now)] == [995, 999]
    assert not policy.should_quarantine(history, now)
    # a death exactly one window ago still counts
    edge = deaths(940, 960, 980, 999)
    assert len(policy.counted(edge, now)) == 4
    assert policy.should_quarantine(edge, now)
    # and drops out once the window has moved past it
    assert not policy.should_quarantine(edge, now + 0.01)


def test_max_restarts_zero_quarantines_at_the_first_death() -> None:
    policy = RestartPolicy(max_restarts=0, window=60.0)
    assert policy.should_quarantine(deaths(999), 1000.0)
