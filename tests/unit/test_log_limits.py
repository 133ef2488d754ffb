"""A log line a peer can trigger at will is rate-limited: one WARNING per interval, with a count."""

from __future__ import annotations

import logging

import pytest

from sessiond.logs import RateLimitedWarning


class ManualClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.limited"]


def test_the_first_event_is_logged_then_the_rest_of_the_interval_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.limited")
    clock = ManualClock()
    limited = RateLimitedWarning(logging.getLogger("test.limited"), "undecodable request", interval=10.0, clock=clock)

    limited.warn("on A: corrupt")
    for index in range(500):
        clock.now += 0.01
        limited.warn(f"on B: corrupt {index}")

    assert _messages(caplog) == ["undecodable request on A: corrupt"]
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in caplog.records)


def test_after_the_interval_the_next_event_is_logged_with_how_many_were_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.limited")
    clock = ManualClock()
    limited = RateLimitedWarning(logging.getLogger("test.limited"), "undecodable request", interval=10.0, clock=clock)
    limited.warn("1")
    limited.warn("2")
    limited.warn("3")

    clock.now += 10.0  # exactly at the end of the interval
    limited.warn("4")
    clock.now += 30.0
    limited.warn("5")

    assert _messages(caplog) == [
        "undecodable request 1",
        "undecodable request 4 (and 2 more since the previous warning)",
        "undecodable request 5",
    ]
