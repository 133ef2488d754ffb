"""Domain errors of the session core.

One root (:class:`SessionError`), one subclass per failure reason. Each carries the
``reason`` string of SPEC §3 and typed attributes; the server maps them to gRPC status
codes in exactly one table (``sessiond.server.errors``).
"""

from __future__ import annotations

from collections.abc import Mapping

from sessiond.core.model import FailureCause


class SessionError(Exception):
    """Root of every error the core raises on purpose."""

    reason: str = "INTERNAL"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgumentError(SessionError):
    """A request field is malformed; ``field`` names it."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", metadata={"field": field})
        self.field = field


class MalformedRequestError(SessionError):
    """A request could not be decoded at all: corrupt wire bytes, invalid UTF-8 in a string field."""

    reason = "MALFORMED_REQUEST"


class InvalidRecreateTokenError(SessionError):
    """A recreate token is malformed or was not made by sessiond."""

    reason = "INVALID_RECREATE_TOKEN"


class SessionNotFoundError(SessionError):
    """No session with this id (never existed, or past its retention)."""

    reason = "SESSION_NOT_FOUND"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} not found", metadata={"session_id": session_id})
        self.session_id = session_id


class ExistingOpenSessionError(SessionError):
    """The owner already holds (or is waiting for) an OPEN session."""

    reason = "EXISTING_OPEN_SESSION"

    def __init__(self, owner: str, session_id: str | None) -> None:
        meta = {"owner": owner}
        if session_id:
            meta["session_id"] = session_id
        super().__init__(f"owner {owner!r} already holds an open session", metadata=meta)
        self.owner = owner
        self.session_id = session_id


class CreationTimeoutError(SessionError):
    """No worker of the task queue had capacity within ``creation_timeout``."""

    reason = "CREATION_TIMEOUT"


class WorkerUnavailableError(SessionError):
    """The recreate token's worker was not connected with capacity within ``creation_timeout``."""

    reason = "WORKER_UNAVAILABLE"


class NoCapacityError(SessionError):
    """``creation_timeout`` is 0 and no worker has a free slot right now."""

    reason = "NO_CAPACITY"


class SessionFailedError(SessionError):
    """A new activity was asked of a FAILED session."""

    reason = "SESSION_FAILED"

    def __init__(self, session_id: str, cause: FailureCause) -> None:
        super().__init__(
            f"session {session_id} failed: {cause.name}",
            metadata={"session_id": session_id, "cause": cause.name},
        )
        self.session_id = session_id
        self.cause = cause


class SessionClosedError(SessionError):
    """A new activity was asked of a CLOSED session."""

    reason = "SESSION_CLOSED"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} is closed", metadata={"session_id": session_id})
        self.session_id = session_id


class ActivityAbortedError(SessionError):
    """An activity in flight ended because its session failed or was completed.

    ``reason`` is ``SESSION_FAILED`` or ``SESSION_COMPLETED`` (both ABORTED on the wire).
    """

    def __init__(self, session_id: str, reason: str, cause: FailureCause | None) -> None:
        meta = {"session_id": session_id}
        if cause is not None:
            meta["cause"] = cause.name
        what = "failed" if cause is not None else "was completed"
        super().__init__(f"session {session_id} {what} while the activity ran", metadata=meta)
        self.reason = reason
        self.session_id = session_id
        self.cause = cause


class MessageTooLargeError(SessionError):
    """A message would exceed ``max_message_size`` (an activity input, say); nothing was sent."""

    reason = "MESSAGE_TOO_LARGE"

    def __init__(self, what: str, size: int, limit: int, *, session_id: str = "") -> None:
        meta = {"size": str(size), "limit": str(limit)}
        if session_id:
            meta["session_id"] = session_id
        super().__init__(f"{what} is {size} bytes, over the server's max_message_size of {limit} bytes",
                         metadata=meta)
        self.size = size
        self.limit = limit


class WorkerBackloggedError(SessionError):
    """The session's worker has ``max_worker_backlog`` bytes queued already (it reads too slowly)."""

    reason = "WORKER_BACKLOGGED"

    def __init__(self, worker_id: str, session_id: str, queued: int, limit: int) -> None:
        super().__init__(
            f"worker {worker_id!r} has {queued} bytes queued, at its max_worker_backlog of {limit}; retry later",
            metadata={"worker_id": worker_id, "session_id": session_id, "queued_bytes": str(queued),
                      "limit": str(limit)},
        )
        self.worker_id = worker_id


class TooManyWaitersError(SessionError):
    """A Create/Recreate would wait, but the global or the task queue's cap of waiters is reached."""

    reason = "TOO_MANY_WAITERS"

    def __init__(self, task_queue: str, limit: int, scope: str) -> None:
        super().__init__(
            f"{limit} creates are already waiting {scope}; retry later or raise the cap",
            metadata={"task_queue": task_queue, "limit": str(limit)},
        )
        self.task_queue = task_queue
        self.limit = limit


class ActivityTimeoutError(SessionError):
    """The activity did not finish within its ``start_to_close_timeout``."""

    reason = "ACTIVITY_TIMEOUT"


class ActivityHeartbeatTimeoutError(SessionError):
    """The activity sent no heartbeat within its ``heartbeat_timeout``.

    Not a status on the wire: the server answers it in-band (``ExecuteActivityResponse.heartbeat_timeout``)
    together with the activity's latest heartbeat details, like an activity failure.
    """

    reason = "ACTIVITY_HEARTBEAT_TIMEOUT"


class IllegalTransitionError(SessionError):
    """A state transition outside the lifecycle table was attempted (a bug, never a user error)."""

    reason = "INTERNAL"


class UnauthenticatedError(SessionError):
    """The call carried no valid credentials."""

    reason = "UNAUTHENTICATED"


class PermissionDeniedError(SessionError):
    """The credentials are valid but not for this RPC (a caller token on the worker stream, say)."""

    reason = "PERMISSION_DENIED"


class ShuttingDownError(SessionError):
    """The server is shutting down; retry against another (or the restarted) server."""

    reason = "SHUTTING_DOWN"


class WorkerDetachedError(SessionError):
    """An activity in flight ended because its worker's stream ended and the session detached.

    The session stays OPEN (it waits ``reattach_timeout`` for the worker); the activity's outcome
    is unknown: it may have run, partly or fully.
    """

    reason = "WORKER_DETACHED"

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"the worker of session {session_id} went away while the activity ran (outcome unknown); "
            "the session waits for it to reattach",
            metadata={"session_id": session_id},
        )
        self.session_id = session_id


class RecoveringError(SessionError):
    """The server restarted and is still rebuilding its table from the workers' reports: retry."""

    reason = "RECOVERING"


class OwnerUnavailableError(SessionError):
    """Replicas (SPEC §6.5): the replica that owns the session's worker cannot be reached now, or the
    worker is moving between replicas (its owner died or fenced itself). Retry: the worker is
    adopted by another replica within the failover window. For an activity in flight when its
    owner died, the outcome is unknown: it may have run."""

    reason = "OWNER_UNAVAILABLE"


class WorkerIdInUseError(SessionError):
    """A live process is registered with this worker_id; this registration displaced nothing.

    ``stale_after`` is how many seconds the live registration stays live without being heard from:
    retrying is worth it only that long.
    """

    reason = "WORKER_ID_IN_USE"

    def __init__(self, task_queue: str, worker_id: str, stale_after: float) -> None:
        super().__init__(
            f"worker_id {worker_id!r} of task queue {task_queue!r} is in use by a live worker process",
            metadata={"worker_id": worker_id, "task_queue": task_queue, "stale_after_seconds": f"{stale_after:.3f}"},
        )
        self.worker_id = worker_id
        self.stale_after = stale_after


class AdoptionRefusedError(Exception):
    """A session record could not be adopted (not a :class:`SessionError`: it never reaches a caller;
    the worker that reported the session just does not get it back)."""
