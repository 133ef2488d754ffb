"""An activity's cancellation flag, seen from the loop and from an activity thread: a cancel before
``wait_for_cancelled`` is seen at once, one during it wakes the waiting thread."""

from __future__ import annotations

import threading
import time

from sessiond_client._activity import _ActivityContext


def _context() -> _ActivityContext:
    return _ActivityContext(info=None)  # type: ignore[arg-type]  # the flag does not read info


def test_a_cancel_before_the_wait_is_seen_at_once_with_its_first_reason() -> None:
    ctx = _context()
    assert not ctx.cancelled and ctx.cancel_reason is None
    ctx.cancel("SESSION_COMPLETED")
    ctx.cancel("ACTIVITY_TIMEOUT")  # a second cancel changes nothing
    assert ctx.cancelled and ctx.cancel_reason == "SESSION_COMPLETED"
    assert ctx.wait(0) is True


def test_a_cancel_during_the_wait_wakes_the_waiting_thread() -> None:
    ctx = _context()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(ctx.wait(30)))
    waiter.start()
    deadline = time.monotonic() + 10
    while ctx._event is None and time.monotonic() < deadline:  # the thread is waiting on the event
        time.sleep(0.001)
    ctx.cancel("WORKER_SHUTDOWN")
    waiter.join(10)
    assert woke == [True]


def test_an_uncancelled_wait_times_out_false() -> None:
    assert _context().wait(0.01) is False
