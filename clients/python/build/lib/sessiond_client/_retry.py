"""Jittered exponential backoff for reconnects and transport-level retries.

"Full jitter" (a uniform delay between 0 and the capped exponential bound) spreads a reconnect
storm after a server restart over the whole window instead of synchronising every worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import grpc

# Codes that mean "the connection, not the request, failed": the server is starting or stopping,
# or grpc core shed load (it answers CANCELLED/INTERNAL to bursts beyond its pending-request limit).
# Only ever retried without ErrorInfo: a sessiond verdict is never retried.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


class Backoff:
    """Delays for successive attempts: uniform in ``[0, min(maximum, initial * multiplier**n))``."""

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 5.0,
        multiplier: float = 2.0,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """Build a backoff; ``rng`` returns a float in [0, 1) and is injectable for tests."""
        if initial <= 0 or maximum < initial or multiplier < 1:
            raise ValueError("need 0 < initial <= maximum and multiplier >= 1")
        self._initial = initial
        self._maximum = maximum
        self._multiplier = multiplier
        self._rng = rng
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def bound(self) -> float:
        """The upper bound of the next delay."""
        # Cap the exponent so a long outage cannot overflow the float.
        return min(self._maximum, self._initial * self._multiplier ** min(self._attempt, 64))

    def next_delay(self) -> float:
        """Return the next delay and advance."""
        delay = self._rng() * self.bound()
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Start over after a success."""
        self._attempt = 0
