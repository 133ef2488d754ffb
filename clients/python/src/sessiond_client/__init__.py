"""sessiond-client: the typed Python client and worker library for sessiond (worker sessions as a service).

Callers use :class:`SessionClient`; worker processes use :class:`SessionWorker` and the
:mod:`sessiond_client.activity` helpers. The generated stubs are in :mod:`sessiond_client.api.v1`.
"""

from sessiond_client import activity
from sessiond_client._activity import ActivityInfo
from sessiond_client._client import SessionClient
from sessiond_client._converter import DefaultPayloadConverter, PayloadConverter
from sessiond_client._errors import (
    ActivityError,
    ActivityHeartbeatTimeoutError,
    ActivityTimeoutError,
    ApplicationError,
    CreationTimeoutError,
    ExistingOpenSessionError,
    InvalidArgumentError,
    InvalidRecreateTokenError,
    MalformedRequestError,
    MessageTooLargeError,
    NoCapacityError,
    OwnerUnavailableError,
    PermissionDeniedError,
    RecoveringError,
    RPCError,
    ServerShuttingDownError,
    SessionAlreadyOpenError,
    SessionClosedError,
    SessionCompletedError,
    SessiondError,
    SessionFailedError,
    SessionNotFoundError,
    TooManyWaitersError,
    UnauthenticatedError,
    WorkerBackloggedError,
    WorkerDetachedError,
    WorkerIdInUseError,
    WorkerReplacedError,
    WorkerUnavailableError,
)
from sessiond_client._retry_policy import RetryPolicy
from sessiond_client._session import Session, SessionContext, current_session
from sessiond_client._time import Duration
from sessiond_client._types import (
    FailureCause,
    SessionFailure,
    SessionInfo,
    SessionOptions,
    SessionState,
    WaitingRequests,
    WorkerInfo,
    WorkerRef,
)
from sessiond_client._version import __version__
from sessiond_client._worker import SessionWorker

__all__ = [
    "ActivityError",
    "ActivityHeartbeatTimeoutError",
    "ActivityInfo",
    "ActivityTimeoutError",
    "ApplicationError",
    "CreationTimeoutError",
    "DefaultPayloadConverter",
    "Duration",
    "ExistingOpenSessionError",
    "FailureCause",
    "InvalidArgumentError",
    "InvalidRecreateTokenError",
    "MalformedRequestError",
    "MessageTooLargeError",
    "NoCapacityError",
    "OwnerUnavailableError",
    "PayloadConverter",
    "PermissionDeniedError",
    "RPCError",
    "RecoveringError",
    "RetryPolicy",
    "ServerShuttingDownError",
    "Session",
    "SessionAlreadyOpenError",
    "SessionClient",
    "SessionClosedError",
    "SessionCompletedError",
    "SessionContext",
    "SessionFailedError",
    "SessionFailure",
    "SessionInfo",
    "SessionNotFoundError",
    "SessionOptions",
    "SessionState",
    "SessionWorker",
    "SessiondError",
    "TooManyWaitersError",
    "UnauthenticatedError",
    "WaitingRequests",
    "WorkerBackloggedError",
    "WorkerDetachedError",
    "WorkerIdInUseError",
    "WorkerInfo",
    "WorkerRef",
    "WorkerReplacedError",
    "WorkerUnavailableError",
    "__version__",
    "activity",
    "current_session",
]
