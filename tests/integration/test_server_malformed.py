"""Undecodable requests (corrupt wire bytes, invalid UTF-8, a wrong message type) on every RPC,
health and reflection: INVALID_ARGUMENT ``MALFORMED_REQUEST``, at most a rate-limited WARNING.

Requests are sent as raw bytes (identity serializers), the way a broken or hostile peer would.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from sessiond_client.api.v1 import session_service_pb2 as svc
from sessiond_client.api.v1 import worker_pb2

from tests.integration.conftest import ServerFactory, Sessiond, eventually, rpc_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SERVICE = "/sessiond.v1.SessionService/"
CALLER_RPCS = ["CreateSession", "RecreateSession", "CompleteSession", "GetSessionInfo", "ExecuteActivity",
               "ListSessions", "ListWorkers"]
CORRUPT = b"\xff\xff\xff"  # a field tag whose varint never ends
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 holding invalid UTF-8 (a string in every request but Recreate's)
BAD_UTF8_OWNER = b"\x1a\x02\xff\xfe"  # field 3 (RecreateSession's owner; its field 1 is bytes)
WRONG_TYPE = b"\x08\x05"  # field 1 (task_queue, a string) sent as a varint
BAD_BODIES = {"corrupt": CORRUPT, "bad-utf8": BAD_UTF8}
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def _identity(raw: bytes) -> bytes:
    return raw


def _unary(sessiond: Sessiond, method: str) -> Any:
    return sessiond.channel.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)


async def _stream_outcome(call: Any) -> tuple[grpc.StatusCode, str]:
    """Read a stream call to its end; (final code, details)."""
    while await call.read() is not grpc.aio.EOF:
        pass
    return await call.code(), await call.details()


def _server_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.asyncio
@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
@pytest.mark.parametrize("rpc", CALLER_RPCS)
async def test_an_undecodable_request_is_malformed_request_without_a_traceback(
        sessiond: Sessiond, caplog: pytest.LogCaptureFixture, rpc: str, body: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    if rpc == "RecreateSession" and body == BAD_UTF8:
        body = BAD_UTF8_OWNER

    error, _ = await rpc_error(_unary(sessiond, SERVICE + rpc)(body, timeout=10), INVALID, "MALFORMED_REQUEST")

    assert "sessiond.v1." in (error.details() or ""), "the message names the expected message type"
    assert _server_errors(caplog) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
async def test_an_undecodable_watch_is_malformed_request(sessiond: Sessiond, caplog: pytest.LogCaptureFixture,
                                                         body: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    watch = sessiond.channel.unary_stream(SERVICE + "WatchSession", request_serializer=_identity,
                                          response_deserializer=_identity)

    await rpc_error(_stream_outcome(watch(body, timeout=10)), INVALID, "MALFORMED_REQUEST")

    assert _server_errors(caplog) == []


@pytest.mark.asyncio
async def test_a_request_of_the_wrong_message_type_is_answered_never_internal(sessiond: Sessiond) -> None:
    # A field of the right number with the wrong wire type: protobuf keeps it as an unknown field,
    # so the request decodes (empty) and validation answers it like any other request.
    await rpc_error(_unary(sessiond, SERVICE + "CreateSession")(WRONG_TYPE, timeout=10), INVALID, "INVALID_ARGUMENT")
    # A worker's register as GetSessionInfo: the nested message's bytes become a session_id
    # holding control characters.
    register = worker_pb2.WorkerHeartbeatRequest(register=worker_pb2.RegisterWorker(task_queue="q")).SerializeToString()
    await rpc_error(_unary(sessiond, SERVICE + "GetSessionInfo")(register, timeout=10), INVALID, "INVALID_ARGUMENT")


@pytest.mark.asyncio
@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
async def test_health_check_and_watch_answer_malformed_request(sessiond: Sessiond, caplog: pytest.LogCaptureFixture,
                                                               body: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    check = _unary(sessiond, "/grpc.health.v1.Health/Check")
    watch = sessiond.channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=_identity,
                                          response_deserializer=_identity)

    await rpc_error(check(body, timeout=10), INVALID, "MALFORMED_REQUEST")
    await rpc_error(_stream_outcome(watch(body, timeout=10)), INVALID, "MALFORMED_REQUEST")

    assert _server_errors(caplog) == []
    reply = await check(health_pb2.HealthCheckRequest().SerializeToString(), timeout=10)
    assert health_pb2.HealthCheckResponse.FromString(reply).status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.asyncio
async def test_reflection_answers_malformed_request(sessiond: Sessiond, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    call = sessiond.channel.stream_stream(REFLECTION, request_serializer=_identity, response_deserializer=_identity)()
    await call.write(CORRUPT)
    await call.done_writing()

    await rpc_error(_stream_outcome(call), INVALID, "MALFORMED_REQUEST")

    assert _server_errors(caplog) == []


@pytest.mark.asyncio
async def test_a_flood_of_undecodable_requests_logs_one_warning(sessiond: Sessiond,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    create = _unary(sessiond, SERVICE + "CreateSession")

    for _ in range(200):
        await rpc_error(create(CORRUPT, timeout=10), INVALID, "MALFORMED_REQUEST")

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "CreateSession" in warnings[0].getMessage()
    assert not warnings[0].exc_info


def _worker_stream(sessiond: Sessiond) -> Any:
    return sessiond.channel.stream_stream(SERVICE + "WorkerHeartbeat", request_serializer=_identity,
                                          response_deserializer=_identity)()


@pytest.mark.asyncio
@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
async def test_an_undecodable_first_worker_message_ends_the_stream_malformed(
        sessiond: Sessiond, caplog: pytest.LogCaptureFixture, body: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    call = _worker_stream(sessiond)
    await call.write(body)

    await rpc_error(_stream_outcome(call), INVALID, "MALFORMED_REQUEST")

    assert _server_errors(caplog) == []
    assert await sessiond.workers() == {}


@pytest.mark.asyncio
@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
async def test_an_undecodable_message_after_register_ends_the_stream_malformed_not_ok(
        sessiond: Sessiond, caplog: pytest.LogCaptureFixture, body: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    call = _worker_stream(sessiond)
    await call.write(worker_pb2.WorkerHeartbeatRequest(
        register=worker_pb2.RegisterWorker(task_queue="q", worker_id="w-bad")).SerializeToString())
    registered = worker_pb2.WorkerHeartbeatResponse.FromString(await call.read())
    assert registered.WhichOneof("message") == "registered"

    await call.write(body)

    await rpc_error(_stream_outcome(call), INVALID, "MALFORMED_REQUEST")
    assert _server_errors(caplog) == []
    await eventually(lambda: sessiond.server.engine.table.registry.workers == {} or None,
                     message="the worker left when its stream ended")


@pytest.mark.asyncio
async def test_a_good_request_still_works_after_malformed_ones(sessiond: Sessiond) -> None:
    await rpc_error(_unary(sessiond, SERVICE + "ListSessions")(CORRUPT, timeout=10), INVALID, "MALFORMED_REQUEST")

    reply = svc.ListSessionsResponse.FromString(
        await _unary(sessiond, SERVICE + "ListSessions")(svc.ListSessionsRequest().SerializeToString(), timeout=10))

    assert list(reply.sessions) == []


@pytest.mark.asyncio
async def test_health_check_of_a_huge_unknown_service_is_not_found_without_echoing_it(sessiond: Sessiond) -> None:
    check = _unary(sessiond, "/grpc.health.v1.Health/Check")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(health_pb2.HealthCheckRequest(service="x" * 65_536).SerializeToString(), timeout=10)

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
    assert len(caught.value.details() or "") < 200


@pytest.mark.asyncio
@pytest.mark.parametrize("credential", [(), (("authorization", "Bearer not-a-token"),)], ids=["none", "wrong"])
async def test_with_tokens_an_unauthenticated_malformed_request_is_unauthenticated_and_never_logged(
        make_server: ServerFactory, caplog: pytest.LogCaptureFixture, credential: tuple[tuple[str, str], ...]) -> None:
    # The authentication guard answers before the body is looked at, on every shape of RPC: a
    # caller without a valid credential learns nothing from the server's decoder, and its bytes
    # are neither checked nor logged. Health stays open, so its decoder answers.
    caplog.set_level(logging.DEBUG)
    server = await make_server(caller_token="caller-secret", worker_token="worker-secret")
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    metadata = credential or None

    await rpc_error(_unary(server, "/grpc.health.v1.Health/Check")(CORRUPT, timeout=10), INVALID, "MALFORMED_REQUEST")
    for rpc in CALLER_RPCS:
        await rpc_error(_unary(server, SERVICE + rpc)(CORRUPT, timeout=10, metadata=metadata),
                        unauthenticated, "UNAUTHENTICATED")
    watch = server.channel.unary_stream(SERVICE + "WatchSession", request_serializer=_identity,
                                        response_deserializer=_identity)
    await rpc_error(_stream_outcome(watch(CORRUPT, timeout=10, metadata=metadata)), unauthenticated, "UNAUTHENTICATED")
    for path in (SERVICE + "WorkerHeartbeat", REFLECTION):
        call = server.channel.stream_stream(path, request_serializer=_identity,
                                            response_deserializer=_identity)(timeout=10, metadata=metadata)
        await call.write(CORRUPT)
        await rpc_error(_stream_outcome(call), unauthenticated, "UNAUTHENTICATED")

    assert _server_errors(caplog) == []
    undecodable = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(undecodable) == 1 and "Health/Check" in undecodable[0], undecodable
    assert server.server.engine.table.registry.workers == {}
