"""Jittered exponential backoff."""

from __future__ import annotations

import pytest
from sessiond_client._retry import Backoff


def test_bounds_double_up_to_the_cap() -> None:
    backoff = Backoff(0.1, 5.0, rng=lambda: 1.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays[:7] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert delays[7:] == pytest.approx([5.0, 5.0, 5.0])


def test_full_jitter_scales_the_bound() -> None:
    backoff = Backoff(1.0, 8.0, rng=lambda: 0.25)
    assert [backoff.next_delay() for _ in range(3)] == pytest.approx([0.25, 0.5, 1.0])


def test_reset_starts_over() -> None:
    backoff = Backoff(0.1, 5.0, rng=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == pytest.approx(0.1)


def test_a_long_outage_does_not_overflow() -> None:
    backoff = Backoff(0.1, 5.0, rng=lambda: 1.0)
    for _ in range(5000):
        assert backoff.next_delay() <= 5.0


@pytest.mark.parametrize(("initial", "maximum", "multiplier"), [(0, 1, 2), (2, 1, 2), (0.1, 1, 0.5)])
def test_invalid_parameters(initial: float, maximum: float, multiplier: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, maximum, multiplier)
