"""The public surface of sessiond_client is curated: this pins it exactly."""

from __future__ import annotations

import inspect

import sessiond_client
from sessiond_client import activity

EXPECTED = [
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

EXPECTED_ACTIVITY = [
    "ActivityInfo",
    "cancellation_reason",
    "defn",
    "heartbeat",
    "in_activity",
    "info",
    "is_cancelled",
    "wait_for_cancelled",
]


def test_all_is_pinned() -> None:
    assert sessiond_client.__all__ == EXPECTED


def test_every_public_name_resolves() -> None:
    for name in sessiond_client.__all__:
        assert getattr(sessiond_client, name) is not None, name


def test_no_public_name_is_left_out_of_all() -> None:
    # Subpackages become attributes once imported: they are namespaces of their own (pinned below).
    public = {n for n in vars(sessiond_client) if not n.startswith("_")} - {"api", "annotations", "testing", "sync",
                                                                             "contrib"}
    assert public == set(EXPECTED) - {"__version__"}


def test_the_sync_and_testing_namespaces_are_pinned() -> None:
    from sessiond_client import sync, testing

    assert sync.__all__ == ["SyncSession", "SyncSessionClient", "SyncSessionContext"]
    assert testing.__all__ == ["ActivityEnvironment", "SessiondEnvironment"]
    assert sessiond_client.__version__.count(".") == 2


def test_activity_namespace_is_pinned() -> None:
    assert activity.__all__ == EXPECTED_ACTIVITY
    assert activity.ActivityInfo is sessiond_client.ActivityInfo


def test_every_error_shares_the_one_root() -> None:
    errors = [
        getattr(sessiond_client, n)
        for n in EXPECTED
        if inspect.isclass(getattr(sessiond_client, n)) and issubclass(getattr(sessiond_client, n), Exception)
    ]
    assert len(errors) == 29
    assert all(issubclass(e, sessiond_client.SessiondError) for e in errors)


def test_public_classes_and_functions_have_docstrings() -> None:
    for name in EXPECTED:
        obj = getattr(sessiond_client, name)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            assert inspect.getdoc(obj), name
