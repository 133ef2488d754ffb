"""Recent session failures for operator views: a bounded ring of records and per-bucket counts by cause.

The engine records every FAILED session here (one deque append); the dashboard reads it. Both
halves are bounded: the ring keeps the last ``capacity`` failures, the timeline the last ``buckets``
buckets of ``bucket_seconds`` each, and the totals one counter per cause. Time is an argument
(monotonic seconds, the engine's clock); nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """One session that FAILED."""

    at: float
    """Monotonic seconds at which it failed."""
    session_id: str
    task_queue: str
    worker_id: str
    owner: str
    cause: str
    """The cause's name (``WORKER_LOST``, ``HEARTBEAT_TIMEOUT``, ...)."""
    message: str


@dataclass(frozen=True, slots=True)
class Bucket:
    """Failures counted by cause over ``[start, start + seconds)`` (monotonic seconds)."""

    start: float
    seconds: float
    counts: dict[str, int]


class FailureLog:
    """The last ``capacity`` failures, and counts by cause for the last ``buckets`` time buckets."""

    __slots__ = ("_buckets", "_recent", "bucket_count", "bucket_seconds", "totals")

    def __init__(self, *, capacity: int = 200, bucket_seconds: float = 60.0, buckets: int = 60) -> None:
        """Create an empty log.

        Args:
            capacity: how many failure records to keep (oldest dropped first).
            bucket_seconds: the width of one timeline bucket.
            buckets: how many buckets the timeline covers (``buckets * bucket_seconds`` of history).
        """
        if capacity < 1 or buckets < 1 or bucket_seconds <= 0:
            raise ValueError("capacity, buckets and bucket_seconds must be positive")
        self.bucket_seconds = bucket_seconds
        self.bucket_count = buckets
        self._recent: deque[FailureRecord] = deque(maxlen=capacity)
        # (bucket index, counts by cause), oldest first; only buckets that saw a failure.
        self._buckets: deque[tuple[int, dict[str, int]]] = deque(maxlen=buckets)
        self.totals: dict[str, int] = {}
        """Failures by cause since the log was created."""

    def record(self, failure: FailureRecord) -> None:
        """Add one failure. Records arrive in time order (one event loop, one monotonic clock)."""
        self._recent.append(failure)
        index = math.floor(failure.at / self.bucket_seconds)
        if not self._buckets or self._buckets[-1][0] < index:
            self._buckets.append((index, {}))
        counts = self._buckets[-1][1]
        counts[failure.cause] = counts.get(failure.cause, 0) + 1
        self.totals[failure.cause] = self.totals.get(failure.cause, 0) + 1

    def recent(self, limit: int) -> list[FailureRecord]:
        """Up to ``limit`` of the latest failures, newest first."""
        out: list[FailureRecord] = []
        for failure in reversed(self._recent):
            if len(out) >= limit:
                break
            out.append(failure)
        return out

    def timeline(self, now: float) -> list[Bucket]:
        """The last ``buckets`` buckets up to the one holding ``now``, oldest first, empty ones included."""
        last = math.floor(now / self.bucket_seconds)
        first = last - self.bucket_count + 1
        seen = {index: counts for index, counts in self._buckets if first <= index <= last}
        return [Bucket(index * self.bucket_seconds, self.bucket_seconds, dict(seen.get(index, {})))
                for index in range(first, last + 1)]


__all__ = ["Bucket", "FailureLog", "FailureRecord"]
