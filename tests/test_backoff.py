"""backoff.py: exponential bounds, full jitter, giving up."""

from __future__ import annotations

import random

import pytest

from nbchat.backoff import Backoff


def test_bounds_grow_exponentially_to_the_cap() -> None:
    policy = Backoff(initial_s=0.5, cap_s=4.0, factor=2.0)
    assert [policy.bound(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_delays_are_full_jitter_within_the_bound() -> None:
    policy = Backoff(initial_s=0.5, cap_s=10.0)
    rng = random.Random(7)
    first = [policy.delay(1, rng) for _ in range(1000)]
    assert max(first) <= 0.5  # the first retry after a drop comes within 1 s
    assert min(first) < 0.05
    assert max(first) > 0.45
    assert all(0 <= policy.delay(9, rng) <= 10.0 for _ in range(100))


def test_same_seed_same_delays() -> None:
    policy = Backoff()
    assert [policy.delay(n, random.Random(1)) for n in range(1, 5)] == [
        policy.delay(n, random.Random(1)) for n in range(1, 5)
    ]


def test_giving_up_after_max_attempts_or_never() -> None:
    assert not Backoff(max_attempts=3).exhausted(2)
    assert Backoff(max_attempts=3).exhausted(3)
    assert not Backoff(max_attempts=None).exhausted(10_000)


@pytest.mark.parametrize(
    "kwargs", [{"initial_s": 0}, {"cap_s": 0.1}, {"factor": 0.5}, {"max_attempts": 0}]
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        Backoff(**kwargs)
