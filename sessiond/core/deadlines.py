"""An index of deadlines: one heap plus a map, at most one live entry per key.

Setting a key again or removing it marks its old heap entry dead (lazy deletion), so both
are O(log n); the heap is rebuilt when dead entries outnumber live ones.

Several queues can share one :class:`LowWater`: it remembers the earliest deadline set on any of
them since it was last taken. Removing a key never makes a deadline earlier, so a timer armed at
the earliest deadline only has to look at that mark to know whether it must fire sooner, instead of
peeking every queue after every change.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Generic, TypeVar

K = TypeVar("K")

_DEAD = object()


class LowWater:
    """The earliest deadline set on the queues that share it since :meth:`take` was last called."""

    __slots__ = ("low",)

    def __init__(self) -> None:
        self.low = math.inf

    def take(self) -> float:
        """The mark (``math.inf``: no deadline was set since the last take), reset."""
        low, self.low = self.low, math.inf
        return low


class DeadlineQueue(Generic[K]):
    """Keys with deadlines; ``pop_due(now)`` yields the keys whose deadline is ``<= now``."""

    __slots__ = ("_entries", "_heap", "_low_water", "_seq")

    def __init__(self, low_water: LowWater | None = None) -> None:
        """``low_water``: a mark shared with other queues, lowered by every :meth:`set` below it."""
        self._heap: list[list[object]] = []
        self._entries: dict[K, list[object]] = {}
        self._seq = itertools.count()
        self._low_water = low_water

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def set(self, key: K, deadline: float) -> None:
        """Schedule ``key`` at ``deadline``, replacing any earlier schedule."""
        old = self._entries.get(key)
        if old is not None:
            if old[0] == deadline:
                return
            old[2] = _DEAD
        entry: list[object] = [deadline, next(self._seq), key]
        self._entries[key] = entry
        heapq.heappush(self._heap, entry)
        mark = self._low_water
        if mark is not None and deadline < mark.low:
            mark.low = deadline
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._compact()

    def remove(self, key: K) -> None:
        """Unschedule ``key`` if it is scheduled."""
        old = self._entries.pop(key, None)
        if old is not None:
            old[2] = _DEAD

    def deadline(self, key: K) -> float | None:
        """The deadline of ``key``, or None."""
        entry = self._entries.get(key)
        return None if entry is None else entry[0]  # type: ignore[return-value]

    def peek(self) -> float | None:
        """The earliest live deadline, or None when empty."""
        heap = self._heap
        while heap and heap[0][2] is _DEAD:
            heapq.heappop(heap)
        return heap[0][0] if heap else None  # type: ignore[return-value]

    def pop_due(self, now: float) -> list[K]:
        """Remove and return every key whose deadline is at or before ``now``, earliest first."""
        due: list[K] = []
        heap = self._heap
        while heap and (heap[0][2] is _DEAD or heap[0][0] <= now):  # type: ignore[operator]
            entry = heapq.heappop(heap)
            key = entry[2]
            if key is not _DEAD:
                del self._entries[key]  # type: ignore[arg-type]
                due.append(key)  # type: ignore[arg-type]
        return due

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[2] is not _DEAD]
        heapq.heapify(self._heap)
