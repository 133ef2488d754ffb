"""What an activity can see about itself while it runs, and how activities are named.

The worker sets a context variable around every activity; async activities read it directly, sync
activities get a copy of the context in their thread. Cancellation is a ``threading.Event`` so a
sync activity can poll it (:func:`is_cancelled`) or block on it (:func:`wait_for_cancelled`); an
async activity is also cancelled as an asyncio task.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, TypeVar, overload

from sessiond_client._types import SessionInfo

_NAME_ATTR = "__sessiond_activity_name__"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class ActivityInfo:
    """The activity execution that is running, and the session it runs in."""

    activity_id: str
    """Unique id of this execution (assigned by the server)."""
    activity_type: str
    """The registered name the caller asked for."""
    session: SessionInfo
    """The session the activity runs in, as the worker received it."""
    start_to_close_timeout: timedelta | None
    """How long the caller allows; the server cancels the activity after it."""
    headers: Mapping[str, str]
    """Propagation headers from the caller (for example W3C trace context)."""
    worker_id: str
    """The id of the worker running the activity."""
    attempt: int = 1
    """Which attempt this is: 1, then 2, 3, ... when the caller's retry policy retries."""
    heartbeat_timeout: timedelta | None = None
    """The longest the activity may go without :func:`heartbeat` before it is cancelled (None: no limit)."""
    heartbeat_details: Any = None
    """The latest details the previous attempt passed to :func:`heartbeat` (None on a first attempt),
    so a retry can resume where it stopped."""
    resources: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({"sessions": 1}))
    """What the session holds on this worker, by resource: ``{"sessions": 1}`` and every amount it
    asked for, e.g. ``{"gpu": 2, "sessions": 1}`` — the GPUs that are this activity's to use."""

    @property
    def session_id(self) -> str:
        """Shortcut for ``session.session_id``."""
        return self.session.session_id


class _ActivityContext:
    """Per-execution state shared by the worker and the activity (possibly across threads).

    The cancellation flag is a plain bool; the ``threading.Event`` a sync activity can block on
    (:func:`wait_for_cancelled`) is made only when one does: building an Event (a Condition and
    its lock) for every activity was measurable on the activity path. For the same reason the
    worker may hand over a ``make_info`` instead of the :class:`ActivityInfo` (a frozen dataclass of
    ten fields, ~5 µs): it is built the first time the activity reads it, and then kept.
    """

    __slots__ = ("_cancel_reason", "_cancelled", "_event", "_info", "_make_info", "heartbeat_sink")

    def __init__(self, info: ActivityInfo | None, heartbeat_sink: Callable[[Any], None] | None = None,
                 make_info: Callable[[], ActivityInfo] | None = None) -> None:
        self._info = info
        self._make_info = make_info
        self._cancelled = False
        self._event: threading.Event | None = None
        self._cancel_reason: str | None = None
        self.heartbeat_sink = heartbeat_sink

    @property
    def info(self) -> ActivityInfo:
        info = self._info
        if info is None:
            with _EVENTS:  # one object however many threads of the activity ask at once
                if self._info is None:
                    assert self._make_info is not None, "an activity context needs its info or make_info"
                    self._info = self._make_info()
                    self._make_info = None
                info = self._info
        return info

    def cancel(self, reason: str) -> None:
        with _EVENTS:
            if self._cancelled:
                return
            self._cancel_reason = reason
            self._cancelled = True
            event = self._event
        if event is not None:
            event.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def cancel_reason(self) -> str | None:
        return self._cancel_reason

    def wait(self, timeout: float | None) -> bool:
        with _EVENTS:
            # Under the lock: a cancel() either saw this event, or happened before and is seen here.
            if self._event is None:
                self._event = threading.Event()
                if self._cancelled:
                    self._event.set()
            event = self._event
        return event.wait(timeout)


# Guards the creation of an activity's cancellation Event against a concurrent cancel().
_EVENTS = threading.Lock()


_current: ContextVar[_ActivityContext | None] = ContextVar("sessiond_activity", default=None)


def _context() -> _ActivityContext:
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("not running inside a sessiond activity")
    return ctx


def in_activity() -> bool:
    """True when called from inside an activity run by a :class:`SessionWorker`."""
    return _current.get() is not None


def info() -> ActivityInfo:
    """Return the running activity's :class:`ActivityInfo` (including its session's ``SessionInfo``).

    Raises:
        RuntimeError: When not called from inside an activity.
    """
    return _context().info


def is_cancelled() -> bool:
    """True once the server asked to cancel this activity (session completed or failed, timeout).

    Sync activities run in a thread and cannot be interrupted: they should poll this and return
    early. A result returned after cancellation is discarded.
    """
    return _context().cancelled


def cancellation_reason() -> str | None:
    """Why the activity was cancelled (``SESSION_COMPLETED``, ``SESSION_FAILED``, ``ACTIVITY_TIMEOUT``,
    ``WORKER_SHUTDOWN``, ...), or ``None`` while it is not."""
    return _context().cancel_reason


def heartbeat(details: Any = None) -> None:
    """Tell the server the activity is alive, and report its latest progress ``details``.

    Call it from async or sync activities, as often as you like: the worker sends at most a few
    heartbeats per ``heartbeat_timeout`` (the latest details win) and flushes the last ones before
    the result. An activity started with a ``heartbeat_timeout`` that stays silent longer is
    cancelled and its caller gets :class:`~sessiond_client.ActivityHeartbeatTimeoutError`. The caller
    sees the latest details (``ActivityError.heartbeat_details``), and so does a retried attempt
    (:attr:`ActivityInfo.heartbeat_details`). ``details`` are encoded by the worker's converter.

    Raises:
        RuntimeError: When not called from inside an activity.
        TypeError: The converter cannot encode ``details``.
    """
    ctx = _context()
    if ctx.heartbeat_sink is not None:
        ctx.heartbeat_sink(details)


def wait_for_cancelled(timeout: float | None = None) -> bool:
    """Block the calling thread until the activity is cancelled or ``timeout`` seconds pass.

    For sync activities only (it blocks); returns :func:`is_cancelled`.
    """
    return _context().wait(timeout)


@overload
def defn(fn: F, /) -> F: ...


@overload
def defn(*, name: str | None = None) -> Callable[[F], F]: ...


def defn(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a function as an activity, optionally under another name than its ``__name__``.

    Usable bare (``@activity.defn``) or with a name (``@activity.defn(name="download")``). The
    function is returned unchanged, so it stays directly callable in tests.
    """

    def mark(f: F) -> F:
        activity_name = name or getattr(f, "__name__", None)
        if not activity_name:
            raise ValueError("cannot infer an activity name: pass name=")
        setattr(f, _NAME_ATTR, activity_name)
        return f

    return mark(fn) if fn is not None else mark


def _activity_name(fn: Callable[..., Any]) -> str:
    """The registered name of an activity callable: the ``defn`` name, else ``__name__``."""
    named = getattr(fn, _NAME_ATTR, None) or getattr(fn, "__name__", None)
    if not isinstance(named, str) or not named:
        raise ValueError(f"cannot infer an activity name for {fn!r}: use activity.defn(name=...) or a mapping")
    return named
