"""What the core tells the transport layer to do after a call: the outbox.

The core never does I/O. Each mutating call appends events; the caller drains them with
``SessionTable.take_events()`` and publishes them (stream messages, futures, watchers).
"""

from __future__ import annotations

from dataclasses import dataclass

from sessiond.core.errors import SessionError
from sessiond.core.model import Activity, Session, Worker, WorkerKey


@dataclass(frozen=True, slots=True)
class SessionPlaced:
    """A session was placed on a worker; tell the worker, and wake the waiter if there was one."""

    session: Session
    waiter_id: str | None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session became CLOSED or FAILED; tell its worker (at ``epoch``) and its watchers."""

    session: Session
    epoch: int


@dataclass(frozen=True, slots=True)
class WaiterFailed:
    """A waiting Create/Recreate ended without a session."""

    waiter_id: str
    error: SessionError


@dataclass(frozen=True, slots=True)
class ActivityEnded:
    """An activity in flight ended without a result; fail its caller and tell the worker to cancel."""

    activity: Activity
    error: SessionError


@dataclass(frozen=True, slots=True)
class WorkerRegistered:
    """A worker registered; tell it (first on its stream) which sessions it holds from now on besides
    those a SessionPlaced brings: ``reattached`` (detached sessions it got back, and sessions adopted
    from its report). Activities that waited for a reattached session's worker may be sent now."""

    worker: Worker
    reattached: tuple[Session, ...]
    # The subset of ``reattached`` this table did not know before: adopted from the worker's report.
    adopted: tuple[Session, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionDetached:
    """The session's worker went away; the session waits (OPEN, slot kept) for it to reattach."""

    session: Session


@dataclass(frozen=True, slots=True)
class WorkerGone:
    """Nothing holds the worker here any more: its stream ended (or it said goodbye) and none of its
    sessions waits for it to reattach. Replicas let go of its ownership in the store."""

    key: WorkerKey


Event = SessionPlaced | SessionEnded | WaiterFailed | ActivityEnded | WorkerRegistered | SessionDetached | WorkerGone
