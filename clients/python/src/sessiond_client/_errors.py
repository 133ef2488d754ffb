"""The error hierarchy of the client library and the one mapping from a gRPC status to it.

Every error the library raises on purpose is a :class:`SessiondError`. A server error carries a
``google.rpc.ErrorInfo`` (domain ``sessiond``) whose ``reason`` picks the subclass; ``_REASONS``
below is the only table that does so. A status without ErrorInfo (a transport failure, the
client's own RPC deadline) becomes a plain :class:`RPCError` carrying the gRPC code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from sessiond_client._types import FailureCause

ERROR_DOMAIN = "sessiond"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class SessiondError(Exception):
    """Root of every error the sessiond client and worker library raise on purpose."""

    REASON: ClassVar[str] = ""
    """The ErrorInfo ``reason`` this class stands for (empty for client-side errors)."""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        code: grpc.StatusCode | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Build an error.

        Args:
            message: Human-readable text (the status details for server errors).
            reason: The ErrorInfo reason; defaults to the class's ``REASON``.
            code: The gRPC status code, when the error came from the server.
            metadata: The ErrorInfo metadata (``session_id``, ``cause``, ``field``, ...).
        """
        super().__init__(message)
        self.message = message
        self.reason: str = self.REASON if reason is None else reason
        self.code = code
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def session_id(self) -> str | None:
        """The session the error is about, when the server named one."""
        return self.metadata.get("session_id") or None


class RPCError(SessiondError):
    """A gRPC failure the library has no specific class for (transport, own deadline, unknown reason).

    ``code`` is always set; ``reason`` is the ErrorInfo reason if the server sent one, else empty.
    """


class SessionNotFoundError(SessiondError):
    """No session with this id: it never existed, or its retention period passed."""

    REASON = "SESSION_NOT_FOUND"


class ExistingOpenSessionError(SessiondError):
    """The ``owner`` given at creation already holds an OPEN session (``metadata["owner"]``)."""

    REASON = "EXISTING_OPEN_SESSION"


class CreationTimeoutError(SessiondError):
    """No worker of the task queue had a free slot within ``creation_timeout``."""

    REASON = "CREATION_TIMEOUT"


class WorkerUnavailableError(SessiondError):
    """The recreate token's worker was not connected with a free slot within ``creation_timeout``."""

    REASON = "WORKER_UNAVAILABLE"


class ActivityTimeoutError(SessiondError):
    """The activity did not finish within its ``start_to_close_timeout``; the worker was told to cancel it."""

    REASON = "ACTIVITY_TIMEOUT"


class NoCapacityError(SessiondError):
    """``creation_timeout`` was 0 and no worker had a free slot at that moment."""

    REASON = "NO_CAPACITY"


class InvalidArgumentError(SessiondError):
    """A request field is malformed; ``field`` names it."""

    REASON = "INVALID_ARGUMENT"

    @property
    def field(self) -> str | None:
        """The offending request field, when the server named it."""
        return self.metadata.get("field") or None


class MalformedRequestError(InvalidArgumentError):
    """The server could not decode the request at all (corrupt bytes, invalid UTF-8 in a string).

    A subclass of :class:`InvalidArgumentError`: both mean "this request can never succeed as sent".
    """

    REASON = "MALFORMED_REQUEST"


class InvalidRecreateTokenError(SessiondError):
    """The recreate token is malformed or was not made by this sessiond. No slot was taken."""

    REASON = "INVALID_RECREATE_TOKEN"


class SessionFailedError(SessiondError):
    """The session FAILED: before a new activity was sent, while one ran, or as seen by the session watch.

    ``cause`` says why (for example :attr:`FailureCause.WORKER_LOST`); ``in_flight`` is true when an
    activity was running at the time (ABORTED on the wire, or the watch saw the failure first).
    """

    REASON = "SESSION_FAILED"

    def __init__(
        self,
        message: str,
        *,
        cause: FailureCause | None = None,
        session_id: str | None = None,
        in_flight: bool | None = None,
        reason: str | None = None,
        code: grpc.StatusCode | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Build the error; ``cause`` and ``session_id`` are stored in ``metadata`` as the server does."""
        meta = dict(metadata or {})
        if cause is not None:
            meta["cause"] = cause.name
        if session_id is not None:
            meta["session_id"] = session_id
        super().__init__(message, reason=reason, code=code, metadata=meta)
        self.in_flight: bool = code is grpc.StatusCode.ABORTED if in_flight is None else in_flight

    @property
    def cause(self) -> FailureCause:
        """Why the session failed (UNSPECIFIED if the server did not say)."""
        return FailureCause._from_name(self.metadata.get("cause"))


class SessionClosedError(SessiondError):
    """A new activity was asked of a session that is already CLOSED (completed)."""

    REASON = "SESSION_CLOSED"


class SessionCompletedError(SessiondError):
    """The session was completed while this activity ran; the worker was told to cancel it."""

    REASON = "SESSION_COMPLETED"


class UnauthenticatedError(SessiondError):
    """The server rejected the call's credentials (missing or wrong bearer token, TLS identity)."""

    REASON = "UNAUTHENTICATED"


class PermissionDeniedError(SessiondError):
    """The credentials are valid but lack the role this call needs (caller vs worker)."""

    REASON = "PERMISSION_DENIED"


class ServerShuttingDownError(SessiondError):
    """The server is shutting down (UNAVAILABLE): retry against another or the restarted server.

    Idempotent calls (reads, CompleteSession, Create/Recreate with their request id) are retried
    automatically within their deadline before this is raised.
    """

    REASON = "SHUTTING_DOWN"


class MessageTooLargeError(SessiondError):
    """An activity input over the message-size limit (the server's ``--max-message-size``, or the
    client's ``max_message_size`` checked before sending). Nothing reached the worker; the session
    is unaffected. ``size`` and ``limit`` are in bytes.

    A *result* over the limit is not this error: that activity fails with an :class:`ActivityError`
    of type ``"ResultTooLarge"``.
    """

    REASON = "MESSAGE_TOO_LARGE"

    @property
    def size(self) -> int | None:
        """The size of the refused message, in bytes."""
        return _int(self.metadata.get("size"))

    @property
    def limit(self) -> int | None:
        """The limit it exceeded, in bytes."""
        return _int(self.metadata.get("limit"))


class WorkerBackloggedError(SessiondError):
    """The session's worker has ``--max-worker-backlog`` bytes queued that it has not read yet.

    Nothing was sent and the session is unaffected; retry later (the worker is slow or stuck).
    """

    REASON = "WORKER_BACKLOGGED"


class TooManyWaitersError(SessiondError):
    """The create would have to wait for capacity, but the server's cap of waiting creates (in all,
    or on this task queue: ``metadata["limit"]``) is reached. No slot was taken; retry later."""

    REASON = "TOO_MANY_WAITERS"


class WorkerDetachedError(SessiondError):
    """The session's worker went away while this activity ran (ABORTED). The outcome is unknown: the
    activity may have run, partly or fully. The session stays OPEN, detached, and waits
    ``reattach_timeout`` for its worker; retry the activity if it is idempotent."""

    REASON = "WORKER_DETACHED"


class RecoveringError(SessiondError):
    """The server restarted and is rebuilding its table from reconnecting workers, or it drains
    before a restart and starts no new work (UNAVAILABLE). Nothing was done for the call.

    The library retries calls that met it within their deadline before raising it.
    """

    REASON = "RECOVERING"


class OwnerUnavailableError(SessiondError):
    """Replicas: the replica owning the session's worker cannot be reached now, or the worker is
    moving to another replica (UNAVAILABLE). Idempotent calls are retried within their deadline;
    for an activity the outcome is unknown (it may have run)."""

    REASON = "OWNER_UNAVAILABLE"


class WorkerIdInUseError(SessiondError):
    """A live process is already registered with this worker_id (ALREADY_EXISTS).

    :meth:`SessionWorker.run` retries as long as the live one could still turn out to be a hung
    process about to go stale (``stale_after`` seconds), then raises this.
    """

    REASON = "WORKER_ID_IN_USE"

    @property
    def stale_after(self) -> float | None:
        """Seconds for which the live registration stays live without being heard from."""
        raw = self.metadata.get("stale_after_seconds")
        try:
            return None if raw is None else float(raw)
        except ValueError:
            return None


class WorkerReplacedError(SessiondError):
    """This worker's stream was replaced by a newer registration with the same worker_id (the
    process was frozen or cut off for too long). :meth:`SessionWorker.run` raises it and does not
    reconnect: another process now is this worker."""

    REASON = "WORKER_REPLACED"


class SessionAlreadyOpenError(SessiondError):
    """A session was created inside the context of another session that is still OPEN.

    This is the original's "found existing open session in the context" rule, enforced on the
    client with :mod:`contextvars`: a CLOSED or FAILED session in the context does not block.
    ``session_id`` names the open session.
    """

    REASON = "SESSION_ALREADY_OPEN"


class ActivityError(SessiondError):
    """The activity ran on the worker and raised. The session is unaffected and stays OPEN.

    Attributes:
        type: The error type the worker reported (usually the exception class name).
        non_retryable: True when the worker said retrying cannot succeed.
        details: The decoded details payload, or ``None``.
        activity_type: The activity that failed.
        heartbeat_details: The details of the activity's latest ``activity.heartbeat()``, or ``None``.
        attempt: Which attempt failed (1 for the first; the last one when a retry policy gave up).
    """

    REASON = "ACTIVITY_FAILED"

    def __init__(
        self,
        message: str,
        *,
        type: str,
        non_retryable: bool = False,
        details: Any = None,
        activity_type: str = "",
        session_id: str | None = None,
        heartbeat_details: Any = None,
        attempt: int = 1,
    ) -> None:
        """Build the error from an ActivityFailure's fields."""
        super().__init__(message, metadata={"session_id": session_id} if session_id else None)
        self.type = type
        self.non_retryable = non_retryable
        self.details = details
        self.activity_type = activity_type
        self.heartbeat_details = heartbeat_details
        self.attempt = attempt
        # The encoded heartbeat details, handed to the next attempt as they came.
        self._heartbeat_payload: Any = None

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.type else self.message


class ActivityHeartbeatTimeoutError(ActivityError):
    """The activity sent no ``activity.heartbeat()`` within its ``heartbeat_timeout``: the worker was
    told to cancel it. An :class:`ActivityError` (the session stays OPEN), so a retry policy
    retries it; ``heartbeat_details`` holds the last details it reported."""

    REASON = "ACTIVITY_HEARTBEAT_TIMEOUT"


class ApplicationError(SessiondError):
    """Raise inside an activity to control the failure the caller sees as :class:`ActivityError`.

    Any other exception also fails the activity (type = its class name); this one adds a custom
    ``type``, ``non_retryable`` and structured ``details`` (encoded with the worker's converter).
    """

    REASON = "ACTIVITY_FAILED"

    def __init__(self, message: str, *details: Any, type: str | None = None, non_retryable: bool = False) -> None:
        """Build the error.

        Args:
            message: Human-readable text.
            *details: Values sent to the caller (decoded into ``ActivityError.details``: one value
                as itself, several as a list).
            type: The error type reported; defaults to ``"ApplicationError"``.
            non_retryable: Tell the caller that retrying cannot succeed.
        """
        super().__init__(message)
        self.details = details
        self.type = type or "ApplicationError"
        self.non_retryable = non_retryable


# The one table: ErrorInfo reason -> class. SESSION_FAILED arrives both as FAILED_PRECONDITION (new
# activity) and ABORTED (activity in flight); the class tells them apart by code (``in_flight``).
_REASONS: dict[str, type[SessiondError]] = {
    cls.REASON: cls
    for cls in (
        SessionNotFoundError,
        ExistingOpenSessionError,
        CreationTimeoutError,
        WorkerUnavailableError,
        ActivityTimeoutError,
        NoCapacityError,
        InvalidArgumentError,
        InvalidRecreateTokenError,
        MalformedRequestError,
        SessionFailedError,
        SessionClosedError,
        SessionCompletedError,
        UnauthenticatedError,
        PermissionDeniedError,
        ServerShuttingDownError,
        MessageTooLargeError,
        WorkerBackloggedError,
        TooManyWaitersError,
        WorkerDetachedError,
        RecoveringError,
        OwnerUnavailableError,
        WorkerIdInUseError,
        WorkerReplacedError,
    )
}


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None

# Without ErrorInfo (an auth interceptor, a proxy), these codes still have an obvious class.
_CODES: dict[grpc.StatusCode, type[SessiondError]] = {
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def _error_info(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> error_details_pb2.ErrorInfo | None:
    """Extract the first ErrorInfo from ``grpc-status-details-bin``, or None (also when it is garbled)."""
    for key, value in trailing_metadata or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a garbled trailer must not hide the status code itself
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
        return None
    return None


def _from_status(
    code: grpc.StatusCode,
    details: str | None,
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> SessiondError:
    """Map a status (code, details, trailers) to the library's error class."""
    message = details or code.name
    info = _error_info(trailing_metadata)
    if info is not None and info.domain == ERROR_DOMAIN:
        metadata = dict(info.metadata)
        cls = _REASONS.get(info.reason)
        if cls is not None:
            return cls(message, reason=info.reason, code=code, metadata=metadata)
        return RPCError(message, reason=info.reason, code=code, metadata=metadata)
    by_code = _CODES.get(code)
    if by_code is not None:
        return by_code(message, code=code)
    return RPCError(message, reason=info.reason if info is not None else "", code=code)


def _from_rpc_error(err: grpc.RpcError) -> SessiondError:
    """Map a failed call (``grpc.aio.AioRpcError`` or a sync ``grpc.RpcError``) to the library's error."""
    code = err.code()
    details = err.details()
    # grpc-stubs types this as the sync API's tuple of _Metadatum; both that (a namedtuple) and the
    # aio Metadata iterate as (key, value) pairs.
    trailing = cast(Iterable[tuple[str, str | bytes]], err.trailing_metadata())
    return _from_status(code, details, trailing)
