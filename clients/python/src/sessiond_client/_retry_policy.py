"""How a caller retries an activity that failed: :class:`RetryPolicy`.

Only :class:`~sessiond_client.ActivityError` is retried (the activity raised, or went silent past
its ``heartbeat_timeout``): a session that failed or was completed, an ``ACTIVITY_TIMEOUT`` or a
transport error is never retried by the policy, because the next attempt could not run on the
same worker or the caller's budget is spent. The retries run on the session's worker, like the
first attempt; the activity sees :attr:`ActivityInfo.attempt` and the latest heartbeat details of
the previous attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sessiond_client._time import Duration, to_timedelta


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one ``execute_activity`` call, with exponential backoff between attempts.

    The delay before attempt ``n + 1`` is ``initial_interval * backoff_coefficient ** (n - 1)``,
    capped at ``maximum_interval``.
    """

    initial_interval: Duration = timedelta(seconds=1)
    """The delay before the first retry."""
    backoff_coefficient: float = 2.0
    """How much each delay grows over the previous one (at least 1)."""
    maximum_interval: Duration | None = None
    """The longest delay; ``None`` = 100 × ``initial_interval``."""
    maximum_attempts: int = 0
    """Attempts in all, the first included; 0 = no limit (the session's life still bounds them)."""
    non_retryable_error_types: Sequence[str] = field(default_factory=tuple)
    """``ActivityError.type`` values that are never retried (an error raised with
    ``non_retryable=True`` never is either)."""

    def __post_init__(self) -> None:
        if to_timedelta(self.initial_interval) <= timedelta(0):
            raise ValueError("initial_interval must be positive")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be at least 1")
        if self.maximum_interval is not None and to_timedelta(self.maximum_interval) < to_timedelta(
                self.initial_interval):
            raise ValueError("maximum_interval must not be shorter than initial_interval")
        if self.maximum_attempts < 0:
            raise ValueError("maximum_attempts must not be negative (0 = no limit)")
        object.__setattr__(self, "non_retryable_error_types", tuple(self.non_retryable_error_types))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        initial = to_timedelta(self.initial_interval).total_seconds()
        cap = initial * 100 if self.maximum_interval is None else to_timedelta(self.maximum_interval).total_seconds()
        # The exponent is capped so a long run of attempts cannot overflow the float.
        return min(cap, initial * self.backoff_coefficient ** min(attempt - 1, 64))

    def retries(self, attempt: int, error_type: str, non_retryable: bool) -> bool:
        """Whether a failure of ``error_type`` on attempt ``attempt`` (1-based) is retried."""
        if non_retryable or error_type in self.non_retryable_error_types:
            return False
        return self.maximum_attempts == 0 or attempt < self.maximum_attempts
