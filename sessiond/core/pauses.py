"""The server's own pauses, so liveness can judge workers only on silence the server could observe.

When the server's event loop stops (SIGSTOP, a long GC pause, CPU starvation, VM steal), worker
messages keep arriving and wait unread in socket buffers. Judging a worker's silence across that
span would blame it for the server's blindness (SPEC §6.1). The application layer measures such
spans and records them here; the session table subtracts them from a worker's silence.

Pure: no clock. Pauses are rare, so a short list suffices.
"""

from __future__ import annotations

from collections import deque

# Enough for any realistic run of stalls within one heartbeat_timeout; past it, the oldest pause is
# forgotten, which can only make liveness stricter for a worker silent since before it.
MAX_PAUSES = 64


class PauseLedger:
    """Spans ``[start, end)`` in which the server observed nothing, oldest first, merged when they touch."""

    __slots__ = ("_spans",)

    def __init__(self) -> None:
        self._spans: deque[tuple[float, float]] = deque(maxlen=MAX_PAUSES)

    def __len__(self) -> int:
        return len(self._spans)

    def add(self, start: float, end: float) -> None:
        """Record a pause (an empty or backwards span is ignored)."""
        if end <= start:
            return
        spans = self._spans
        if spans and start <= spans[-1][1]:
            first, last = spans.pop()
            start, end = min(start, first), max(end, last)
        spans.append((start, end))

    def since(self, anchor: float) -> float:
        """Seconds of pause after ``anchor``: the silence since then the server could not observe."""
        total = 0.0
        for start, end in reversed(self._spans):
            if end <= anchor:
                break
            total += end - max(start, anchor)
        return total
