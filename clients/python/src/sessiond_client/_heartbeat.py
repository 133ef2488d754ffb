"""Activity heartbeats on the worker: ``activity.heartbeat(details)`` to ``ActivityHeartbeat`` messages.

An activity may call ``heartbeat`` in a tight loop; the worker sends at most one message per
throttle interval (half the activity's ``heartbeat_timeout``, at most 30 s; 5 s without one), the
first one at once, and the latest details win. Whatever is pending is flushed just before the
activity's result, on the same ordered stream, so the server (and so the caller) always holds the
final details. Details are encoded in the calling thread, so an unencodable value raises in the
activity; the throttle itself runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Callable
from typing import Any, Protocol

from sessiond_client._converter import PayloadConverter
from sessiond_client.api.v1 import session_pb2

# Without a heartbeat_timeout, heartbeats only carry progress details: a few per minute is plenty.
_IDLE_THROTTLE = 5.0
_MAX_THROTTLE = 30.0


def throttle_interval(heartbeat_timeout: float | None) -> float:
    """The least time between two heartbeat messages of one activity."""
    if heartbeat_timeout is None or heartbeat_timeout <= 0:
        return _IDLE_THROTTLE
    # Half the timeout: one late message (a busy loop, a slow network) still arrives in time.
    return min(heartbeat_timeout / 2.0, _MAX_THROTTLE)


class _Timer(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """The part of an event loop the throttle uses (a manual clock implements it in tests)."""

    def time(self) -> float: ...
    def call_at(self, when: float, callback: Callable[[], object], /) -> _Timer: ...


class HeartbeatThrottle:
    """Throttles one activity's heartbeats; every method runs on the scheduler's (loop's) thread."""

    __slots__ = ("_closed", "_interval", "_last_sent", "_pending", "_scheduler", "_send", "_timer")

    def __init__(self, interval: float, send: Callable[[session_pb2.Payload | None], None],
                 scheduler: Scheduler) -> None:
        """``send(details)`` writes one ActivityHeartbeat message."""
        self._interval = interval
        self._send = send
        self._scheduler = scheduler
        self._last_sent = -math.inf
        # A list of one item when a heartbeat waits to be sent (its details may be None).
        self._pending: list[session_pb2.Payload | None] = []
        self._timer: _Timer | None = None
        self._closed = False

    def beat(self, details: session_pb2.Payload | None) -> None:
        """A heartbeat: sent now if the interval has passed since the last one, else at its end."""
        if self._closed:
            return
        self._pending[:] = [details]
        now = self._scheduler.time()
        due = self._last_sent + self._interval
        if now >= due:
            self.flush()
        elif self._timer is None:
            self._timer = self._scheduler.call_at(due, self._on_timer)

    def flush(self) -> None:
        """Send the pending heartbeat now, if there is one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending and not self._closed:
            details = self._pending.pop()
            self._last_sent = self._scheduler.time()
            self._send(details)

    def close(self) -> None:
        """The activity ended: drop what is pending and send nothing more."""
        self._closed = True
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()


class ActivityHeartbeats:
    """The ``activity.heartbeat`` sink of one activity: encodes in the caller's thread, throttles on the loop.

    The throttle is made at the first heartbeat (most activities never send one, and every
    activity gets a sink).
    """

    __slots__ = ("_closed", "_converter", "_heartbeat_timeout", "_loop", "_loop_thread", "_send", "_throttle")

    def __init__(self, loop: asyncio.AbstractEventLoop, converter: PayloadConverter, heartbeat_timeout: float | None,
                 send: Callable[[session_pb2.Payload | None], None], loop_thread: int | None = None) -> None:
        """Build the sink; ``loop_thread`` is the loop's thread id (default: the calling thread's)."""
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop_thread is None else loop_thread
        self._converter = converter
        self._heartbeat_timeout = heartbeat_timeout
        self._send = send
        self._throttle: HeartbeatThrottle | None = None
        self._closed = False

    def __call__(self, details: Any) -> None:
        """``activity.heartbeat(details)`` lands here, from the loop or from an activity thread."""
        payload = None if details is None else self._converter.to_payload(details)
        if threading.get_ident() == self._loop_thread:
            # Directly: an async activity that heartbeats and returns must not overtake its details.
            self._beat(payload)
        else:
            # Queued before the thread's result is (FIFO), so the details still precede the result.
            with contextlib.suppress(RuntimeError):  # the worker's loop already closed: nobody listens
                self._loop.call_soon_threadsafe(self._beat, payload)

    def _beat(self, payload: session_pb2.Payload | None) -> None:
        # On the loop's thread only: the throttle is made, flushed and closed there.
        if self._closed:
            return
        if self._throttle is None:
            self._throttle = HeartbeatThrottle(throttle_interval(self._heartbeat_timeout), self._send, self._loop)
        self._throttle.beat(payload)

    def flush(self) -> None:
        """Send the pending heartbeat now, if there is one (on the loop's thread)."""
        if self._throttle is not None:
            self._throttle.flush()

    def close(self) -> None:
        """The activity ended: send nothing more (on the loop's thread)."""
        self._closed = True
        if self._throttle is not None:
            self._throttle.close()
