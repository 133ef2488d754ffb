"""Every status the server's one error table can produce maps to a specific client error class.

The statuses are built by the server's own encoder (``sessiond.server.errors.to_status``), so a
new server reason without a client class fails here.
"""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
import sessiond_client
from sessiond_client._errors import _from_rpc_error

from sessiond.core import errors as core
from sessiond.core.model import FailureCause as CoreCause
from sessiond.server.errors import STATUS_CODES, to_status

SAMPLES: list[core.SessionError] = [
    core.SessionNotFoundError("s-1"),
    core.ExistingOpenSessionError("alice", "s-1"),
    core.CreationTimeoutError("no capacity in time"),
    core.WorkerUnavailableError("worker gone"),
    core.ActivityTimeoutError("too slow", metadata={"session_id": "s-1"}),
    core.NoCapacityError("full"),
    core.InvalidArgumentError("options.creation_timeout", "must not be negative"),
    core.InvalidRecreateTokenError("garbled"),
    core.MalformedRequestError("request is not a valid sessiond.v1.CreateSessionRequest: Wire format was corrupt"),
    core.SessionFailedError("s-1", CoreCause.HEARTBEAT_TIMEOUT),
    core.SessionClosedError("s-1"),
    core.ActivityAbortedError("s-1", "SESSION_FAILED", CoreCause.WORKER_LOST),
    core.ActivityAbortedError("s-1", "SESSION_COMPLETED", None),
    core.UnauthenticatedError("no token"),
    core.PermissionDeniedError("wrong role"),
    core.ShuttingDownError("the server is shutting down; retry"),
    core.MessageTooLargeError("the activity task", 17_000_000, 16_777_216, session_id="s-1"),
    core.WorkerBackloggedError("w-1", "s-1", 33_000_000, 33_554_432),
    core.TooManyWaitersError("q", 1000, "on task queue 'q'"),
    core.WorkerDetachedError("s-1"),
    core.RecoveringError("not known yet; retry", metadata={"session_id": "s-1"}),
    core.OwnerUnavailableError("the owner replica is unreachable; retry", metadata={"session_id": "s-1"}),
    core.WorkerIdInUseError("q", "w-1", 29.5),
]


def as_client_error(error: core.SessionError) -> sessiond_client.SessiondError:
    status = to_status(error)
    return _from_rpc_error(
        grpc.aio.AioRpcError(
            status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), status.details, None
        )
    )


def test_samples_cover_the_server_table() -> None:
    assert {type(sample) for sample in SAMPLES} == set(STATUS_CODES)


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: f"{type(e).__name__}-{e.reason}")
def test_server_errors_map_to_specific_client_errors(error: core.SessionError) -> None:
    mapped = as_client_error(error)
    assert type(mapped) is not sessiond_client.RPCError, f"no client class for {error.reason}"
    assert type(mapped).REASON == error.reason
    assert mapped.code is STATUS_CODES[type(error)]
    assert mapped.message == error.message
    assert mapped.metadata == error.metadata


def test_message_too_large_carries_size_and_limit() -> None:
    mapped = as_client_error(core.MessageTooLargeError("the activity task", 17_000_000, 16_777_216))
    assert isinstance(mapped, sessiond_client.MessageTooLargeError)
    assert (mapped.size, mapped.limit, mapped.code) == (17_000_000, 16_777_216, grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_failure_causes_survive_the_trip() -> None:
    new = as_client_error(core.SessionFailedError("s-1", CoreCause.EXECUTION_TIMEOUT))
    assert isinstance(new, sessiond_client.SessionFailedError)
    assert (new.cause, new.in_flight, new.session_id) == (sessiond_client.FailureCause.EXECUTION_TIMEOUT, False, "s-1")
    aborted = as_client_error(core.ActivityAbortedError("s-2", "SESSION_FAILED", CoreCause.WORKER_LOST))
    assert isinstance(aborted, sessiond_client.SessionFailedError)
    assert (aborted.cause, aborted.in_flight) == (sessiond_client.FailureCause.WORKER_LOST, True)
    for cause in CoreCause:
        assert sessiond_client.FailureCause[cause.name].value == cause.value


def test_worker_id_in_use_tells_the_library_how_long_to_retry() -> None:
    mapped = as_client_error(core.WorkerIdInUseError("q", "w-1", 29.5))
    assert isinstance(mapped, sessiond_client.WorkerIdInUseError)
    assert mapped.code is grpc.StatusCode.ALREADY_EXISTS and mapped.stale_after == 29.5
