"""One mapping from a gRPC status (with its ErrorInfo) to the library's error classes."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from sessiond_client import (
    ActivityError,
    ActivityTimeoutError,
    ApplicationError,
    CreationTimeoutError,
    ExistingOpenSessionError,
    FailureCause,
    InvalidArgumentError,
    InvalidRecreateTokenError,
    MalformedRequestError,
    NoCapacityError,
    PermissionDeniedError,
    RPCError,
    ServerShuttingDownError,
    SessionAlreadyOpenError,
    SessionClosedError,
    SessionCompletedError,
    SessiondError,
    SessionFailedError,
    SessionNotFoundError,
    UnauthenticatedError,
    WorkerUnavailableError,
)
from sessiond_client._errors import _from_rpc_error

Code = grpc.StatusCode


def rpc_error(
    code: grpc.StatusCode,
    details: str = "boom",
    *,
    reason: str | None = None,
    domain: str = "sessiond",
    metadata: dict[str, str] | None = None,
    raw_details: bytes | None = None,
) -> grpc.aio.AioRpcError:
    """An AioRpcError as the server sends it: ErrorInfo packed in grpc-status-details-bin."""
    trailers = grpc.aio.Metadata()
    if reason is not None:
        info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata or {})
        packed = any_pb2.Any()
        packed.Pack(info)
        status = status_pb2.Status(code=code.value[0], message=details, details=[packed])
        trailers.add("grpc-status-details-bin", status.SerializeToString())
    if raw_details is not None:
        trailers.add("grpc-status-details-bin", raw_details)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details, None)


# SPEC §3, row by row: (reason, code) -> class.
TABLE = [
    ("SESSION_NOT_FOUND", Code.NOT_FOUND, SessionNotFoundError),
    ("EXISTING_OPEN_SESSION", Code.FAILED_PRECONDITION, ExistingOpenSessionError),
    ("CREATION_TIMEOUT", Code.DEADLINE_EXCEEDED, CreationTimeoutError),
    ("WORKER_UNAVAILABLE", Code.DEADLINE_EXCEEDED, WorkerUnavailableError),
    ("ACTIVITY_TIMEOUT", Code.DEADLINE_EXCEEDED, ActivityTimeoutError),
    ("NO_CAPACITY", Code.RESOURCE_EXHAUSTED, NoCapacityError),
    ("INVALID_ARGUMENT", Code.INVALID_ARGUMENT, InvalidArgumentError),
    ("INVALID_RECREATE_TOKEN", Code.INVALID_ARGUMENT, InvalidRecreateTokenError),
    ("MALFORMED_REQUEST", Code.INVALID_ARGUMENT, MalformedRequestError),
    ("SESSION_FAILED", Code.FAILED_PRECONDITION, SessionFailedError),
    ("SESSION_CLOSED", Code.FAILED_PRECONDITION, SessionClosedError),
    ("SESSION_FAILED", Code.ABORTED, SessionFailedError),
    ("SESSION_COMPLETED", Code.ABORTED, SessionCompletedError),
    ("UNAUTHENTICATED", Code.UNAUTHENTICATED, UnauthenticatedError),
    ("PERMISSION_DENIED", Code.PERMISSION_DENIED, PermissionDeniedError),
    ("SHUTTING_DOWN", Code.UNAVAILABLE, ServerShuttingDownError),
]


@pytest.mark.parametrize(("reason", "code", "cls"), TABLE, ids=[f"{r}-{c.name}" for r, c, _ in TABLE])
def test_every_reason_maps_to_its_class(reason: str, code: grpc.StatusCode, cls: type[SessiondError]) -> None:
    error = _from_rpc_error(rpc_error(code, "the details", reason=reason, metadata={"session_id": "s-1"}))
    assert type(error) is cls
    assert error.reason == reason
    assert error.code is code
    assert error.message == "the details"
    assert str(error) == "the details"
    assert error.session_id == "s-1"
    assert error.metadata == {"session_id": "s-1"}


def test_session_failed_carries_the_cause_and_tells_in_flight_from_new() -> None:
    in_flight = _from_rpc_error(
        rpc_error(Code.ABORTED, reason="SESSION_FAILED", metadata={"session_id": "s", "cause": "WORKER_LOST"})
    )
    assert isinstance(in_flight, SessionFailedError)
    assert in_flight.cause is FailureCause.WORKER_LOST
    assert in_flight.in_flight
    new = _from_rpc_error(
        rpc_error(Code.FAILED_PRECONDITION, reason="SESSION_FAILED", metadata={"cause": "HEARTBEAT_TIMEOUT"})
    )
    assert isinstance(new, SessionFailedError)
    assert new.cause is FailureCause.HEARTBEAT_TIMEOUT
    assert not new.in_flight


@pytest.mark.parametrize("cause", ["", "SOMETHING_NEW"])
def test_missing_or_unknown_cause_is_unspecified(cause: str) -> None:
    error = _from_rpc_error(rpc_error(Code.ABORTED, reason="SESSION_FAILED", metadata={"cause": cause}))
    assert isinstance(error, SessionFailedError)
    assert error.cause is FailureCause.UNSPECIFIED


def test_cause_accepts_the_prefixed_enum_name() -> None:
    error = SessionFailedError("x", metadata={"cause": "FAILURE_CAUSE_EXECUTION_TIMEOUT"})
    assert error.cause is FailureCause.EXECUTION_TIMEOUT


def test_a_malformed_request_is_also_an_invalid_argument() -> None:
    error = _from_rpc_error(rpc_error(Code.INVALID_ARGUMENT, reason="MALFORMED_REQUEST"))
    assert isinstance(error, MalformedRequestError)
    assert isinstance(error, InvalidArgumentError)  # `except InvalidArgumentError` catches both


def test_invalid_argument_names_the_field() -> None:
    error = _from_rpc_error(rpc_error(Code.INVALID_ARGUMENT, reason="INVALID_ARGUMENT", metadata={"field": "owner"}))
    assert isinstance(error, InvalidArgumentError)
    assert error.field == "owner"
    assert error.session_id is None


def test_a_bare_deadline_is_the_clients_own_and_stays_generic() -> None:
    error = _from_rpc_error(rpc_error(Code.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert type(error) is RPCError
    assert error.code is Code.DEADLINE_EXCEEDED
    assert error.reason == ""
    assert not isinstance(error, CreationTimeoutError | ActivityTimeoutError)


def test_transport_failures_are_generic() -> None:
    error = _from_rpc_error(rpc_error(Code.UNAVAILABLE, "failed to connect"))
    assert type(error) is RPCError
    assert error.code is Code.UNAVAILABLE
    assert error.message == "failed to connect"


@pytest.mark.parametrize(
    ("code", "cls"), [(Code.UNAUTHENTICATED, UnauthenticatedError), (Code.PERMISSION_DENIED, PermissionDeniedError)]
)
def test_auth_codes_map_without_error_info(code: grpc.StatusCode, cls: type[SessiondError]) -> None:
    error = _from_rpc_error(rpc_error(code, "no token"))
    assert type(error) is cls
    assert error.reason == cls.REASON


def test_unknown_reason_keeps_reason_and_metadata() -> None:
    error = _from_rpc_error(rpc_error(Code.UNAVAILABLE, reason="FUTURE_REASON", metadata={"retry_after": "1"}))
    assert type(error) is RPCError
    assert error.reason == "FUTURE_REASON"
    assert error.metadata == {"retry_after": "1"}


def test_error_info_of_another_domain_is_not_trusted() -> None:
    error = _from_rpc_error(rpc_error(Code.NOT_FOUND, reason="SESSION_NOT_FOUND", domain="example.com"))
    assert type(error) is RPCError
    assert error.code is Code.NOT_FOUND


def test_a_garbled_details_trailer_falls_back_to_the_code() -> None:
    error = _from_rpc_error(rpc_error(Code.NOT_FOUND, "gone", raw_details=b"\xff\xfe not a status"))
    assert type(error) is RPCError
    assert error.code is Code.NOT_FOUND
    assert error.message == "gone"


def test_empty_details_fall_back_to_the_code_name() -> None:
    error = _from_rpc_error(grpc.aio.AioRpcError(Code.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), None, None))
    assert error.message == "INTERNAL"


def test_client_side_errors() -> None:
    already = SessionAlreadyOpenError("open", metadata={"session_id": "outer"})
    assert already.session_id == "outer"
    assert already.code is None
    failure = ActivityError("bad", type="Boom", non_retryable=True, details={"k": 1}, activity_type="a", session_id="s")
    assert str(failure) == "Boom: bad"
    assert (failure.type, failure.non_retryable, failure.details, failure.activity_type) == (
        "Boom",
        True,
        {"k": 1},
        "a",
    )
    assert failure.session_id == "s"
    app = ApplicationError("nope", 1, 2, non_retryable=True)
    assert (app.type, app.details, app.non_retryable) == ("ApplicationError", (1, 2), True)
