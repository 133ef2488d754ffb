"""The worker's heartbeat throttle on a manual clock: the first heartbeat goes at once, then at most one
per interval with the latest details, a flush sends what is pending, and nothing is sent after close."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sessiond_client._heartbeat import HeartbeatThrottle, throttle_interval
from sessiond_client.api.v1 import session_pb2


class ManualScheduler:
    """``time()`` and ``call_at()`` on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], object], list[bool]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object], /) -> ManualScheduler.Timer:
        cancelled = [False]
        self.timers.append((when, callback, cancelled))
        return ManualScheduler.Timer(cancelled)

    def advance(self, to: float) -> None:
        self.now = to
        due = [t for t in self.timers if t[0] <= to and not t[2][0]]
        self.timers = [t for t in self.timers if t not in due]
        for _, callback, _ in due:
            callback()

    class Timer:
        def __init__(self, cancelled: list[bool]) -> None:
            self._cancelled = cancelled

        def cancel(self) -> None:
            self._cancelled[0] = True


def payload(n: int) -> session_pb2.Payload:
    return session_pb2.Payload(data=str(n).encode())


def setup(interval: float = 1.0) -> tuple[HeartbeatThrottle, ManualScheduler, list[tuple[float, bytes | None]]]:
    clock = ManualScheduler()
    sent: list[tuple[float, bytes | None]] = []
    throttle = HeartbeatThrottle(interval, lambda p: sent.append((clock.now, None if p is None else p.data)), clock)
    return throttle, clock, sent


def test_the_first_heartbeat_is_sent_at_once_and_a_burst_becomes_one_message_with_the_latest_details() -> None:
    throttle, clock, sent = setup()
    throttle.beat(payload(1))
    for n in range(2, 50):
        clock.now = n / 100
        throttle.beat(payload(n))
    assert sent == [(0.0, b"1")]
    clock.advance(0.999)
    assert sent == [(0.0, b"1")]
    clock.advance(1.0)  # exactly one interval after the last send
    assert sent == [(0.0, b"1"), (1.0, b"49")]


def test_a_heartbeat_after_a_quiet_interval_goes_at_once() -> None:
    throttle, clock, sent = setup()
    throttle.beat(payload(1))
    clock.now = 5.0
    throttle.beat(None)
    assert sent == [(0.0, b"1"), (5.0, None)]


def test_flush_sends_what_is_pending_now_and_close_drops_it() -> None:
    throttle, clock, sent = setup()
    throttle.beat(payload(1))
    clock.now = 0.2
    throttle.beat(payload(2))
    throttle.flush()
    assert sent == [(0.0, b"1"), (0.2, b"2")]
    throttle.flush()  # nothing pending: nothing sent
    clock.now = 0.3
    throttle.beat(payload(3))
    throttle.close()
    clock.advance(10.0)
    throttle.beat(payload(4))
    assert sent == [(0.0, b"1"), (0.2, b"2")]


@pytest.mark.parametrize(("timeout", "interval"), [(None, 5.0), (1.0, 0.5), (0.2, 0.1), (600.0, 30.0)])
def test_the_interval_is_half_the_heartbeat_timeout_capped(timeout: float | None, interval: float) -> None:
    assert throttle_interval(timeout) == interval
