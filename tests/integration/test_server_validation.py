"""Bad input on every RPC gets the documented code and a message naming the field, never INTERNAL/UNKNOWN."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from sessiond_client.api.v1 import session_pb2, worker_pb2
from sessiond_client.api.v1 import session_service_pb2 as svc

from tests.integration.conftest import OPEN, Sessiond, WorkerFactory, options, rpc_error, seconds

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
LONG = "x" * 257
LONG_UTF8 = "é" * 129  # 129 characters, 258 bytes: the limit counts bytes
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
TOKEN = b"sdrt\x01" + b"\x00" * 4 + b"{}"  # shaped like a token; options are checked first
NUL = "a\x00b"
NEWLINE = "forged\n2026-01-01 00:00:00,000 INFO sessiond.engine worker joined"
ESCAPE = "\x1b[31mred"
DEEP_JSON_TOKEN = base64.urlsafe_b64encode(b"[" * 1500).decode()  # json.loads: RecursionError


@dataclass(frozen=True)
class Case:
    """One bad request and what the server must answer."""

    rpc: str
    request: Message
    field: str
    code: grpc.StatusCode = INVALID
    reason: str = "INVALID_ARGUMENT"


def _register(**fields: Any) -> worker_pb2.WorkerHeartbeatRequest:
    return worker_pb2.WorkerHeartbeatRequest(register=worker_pb2.RegisterWorker(**{"task_queue": "q", **fields}))


def _create(**option_fields: Any) -> svc.CreateSessionRequest:
    return svc.CreateSessionRequest(task_queue="q", options=session_pb2.SessionOptions(**option_fields))


def _activity(**fields: Any) -> svc.ExecuteActivityRequest:
    return svc.ExecuteActivityRequest(**{"session_id": UNKNOWN_ID, "activity_type": "echo", **fields})


CASES: dict[str, Case] = {
    # CreateSession
    "create-empty-task-queue": Case("CreateSession", svc.CreateSessionRequest(), "task_queue"),
    "create-long-task-queue": Case("CreateSession", svc.CreateSessionRequest(task_queue=LONG), "task_queue"),
    "create-long-utf8-task-queue": Case("CreateSession", svc.CreateSessionRequest(task_queue=LONG_UTF8),
                                        "task_queue"),
    "create-long-owner": Case("CreateSession", svc.CreateSessionRequest(task_queue="q", owner=LONG), "owner"),
    "create-long-request-id": Case("CreateSession", svc.CreateSessionRequest(task_queue="q", request_id=LONG),
                                   "request_id"),
    "create-negative-creation-timeout": Case(
        "CreateSession", svc.CreateSessionRequest(task_queue="q", options=options(creation=-1)),
        "options.creation_timeout"),
    "create-negative-nanos-creation-timeout": Case(
        "CreateSession", svc.CreateSessionRequest(task_queue="q", options=session_pb2.SessionOptions(
            creation_timeout=duration_pb2.Duration(nanos=-5))), "options.creation_timeout"),
    "create-negative-execution-timeout": Case(
        "CreateSession", svc.CreateSessionRequest(task_queue="q", options=options(execution=-0.5)),
        "options.execution_timeout"),
    "create-zero-execution-timeout": Case(
        "CreateSession", svc.CreateSessionRequest(task_queue="q", options=options(execution=0)),
        "options.execution_timeout"),
    "create-huge-execution-timeout": Case(
        "CreateSession", svc.CreateSessionRequest(task_queue="q", options=options(execution=400 * 86400)),
        "options.execution_timeout"),
    "create-negative-heartbeat-timeout": Case(
        "CreateSession", svc.CreateSessionRequest(task_queue="q", options=options(heartbeat=-3)),
        "options.heartbeat_timeout"),
    "create-tiny-heartbeat-timeout": Case(
        "CreateSession", svc.CreateSessionRequest(task_queue="q", options=options(heartbeat=0.001)),
        "options.heartbeat_timeout"),
    "create-nul-task-queue": Case("CreateSession", svc.CreateSessionRequest(task_queue=NUL), "task_queue"),
    "create-escape-task-queue": Case("CreateSession", svc.CreateSessionRequest(task_queue=ESCAPE), "task_queue"),
    "create-newline-owner": Case("CreateSession", svc.CreateSessionRequest(task_queue="q", owner=NEWLINE), "owner"),
    "create-nul-request-id": Case("CreateSession", svc.CreateSessionRequest(task_queue="q", request_id=NUL),
                                  "request_id"),
    "create-del-request-id": Case("CreateSession", svc.CreateSessionRequest(task_queue="q", request_id="a\x7f"),
                                  "request_id"),
    "create-c1-owner": Case("CreateSession", svc.CreateSessionRequest(task_queue="q", owner="a\x85b"), "owner"),
    "create-line-separator-owner": Case("CreateSession", svc.CreateSessionRequest(task_queue="q", owner="a\u2028b"),
                                        "owner"),
    # CreateSession: resources and selectors (SPEC §6.3)
    "create-negative-resource": Case("CreateSession", _create(resources={"gpu": -1}), "options.resources[gpu]"),
    "create-huge-resource": Case("CreateSession", _create(resources={"gpu": 10**12 + 1}), "options.resources[gpu]"),
    "create-bad-resource-name": Case("CreateSession", _create(resources={"gpu/0": 1}), "options.resources"),
    "create-empty-resource-name": Case("CreateSession", _create(resources={"": 1}), "options.resources"),
    "create-nul-resource-name": Case("CreateSession", _create(resources={NUL: 1}), "options.resources"),
    "create-two-sessions": Case("CreateSession", _create(resources={"sessions": 2}), "options.resources[sessions]"),
    "create-too-many-resources": Case("CreateSession", _create(resources={f"r{i}": 1 for i in range(33)}),
                                      "options.resources"),
    "create-not-equal-selector": Case("CreateSession", _create(selector="zone!=a"), "options.selector"),
    "create-unclosed-selector": Case("CreateSession", _create(selector="zone in (a,b"), "options.selector"),
    "create-duplicate-key-selector": Case("CreateSession", _create(selector="zone=a,zone=b"), "options.selector"),
    "create-newline-selector": Case("CreateSession", _create(selector=NEWLINE), "options.selector"),
    "create-long-selector": Case("CreateSession", _create(selector="k" * 1025), "options.selector"),
    # RecreateSession
    "recreate-with-selector": Case(
        "RecreateSession", svc.RecreateSessionRequest(recreate_token=TOKEN, options=session_pb2.SessionOptions(
            selector="zone=a")), "options.selector"),
    "recreate-negative-resource": Case(
        "RecreateSession", svc.RecreateSessionRequest(recreate_token=TOKEN, options=session_pb2.SessionOptions(
            resources={"gpu": -2})), "options.resources[gpu]"),
    "recreate-empty-token": Case("RecreateSession", svc.RecreateSessionRequest(), "recreate_token",
                                 reason="INVALID_RECREATE_TOKEN"),
    "recreate-oversized-token": Case("RecreateSession", svc.RecreateSessionRequest(recreate_token=b"t" * 5000),
                                     "recreate_token", reason="INVALID_RECREATE_TOKEN"),
    "recreate-garbage-token": Case("RecreateSession", svc.RecreateSessionRequest(recreate_token=b"garbage"),
                                   "recreate_token", reason="INVALID_RECREATE_TOKEN"),
    "recreate-negative-creation-timeout": Case(
        "RecreateSession", svc.RecreateSessionRequest(recreate_token=TOKEN, options=options(creation=-1)),
        "options.creation_timeout"),
    "recreate-long-owner": Case("RecreateSession", svc.RecreateSessionRequest(recreate_token=TOKEN, owner=LONG),
                                "owner"),
    "recreate-long-request-id": Case(
        "RecreateSession", svc.RecreateSessionRequest(recreate_token=TOKEN, request_id=LONG), "request_id"),
    "recreate-nul-owner": Case("RecreateSession", svc.RecreateSessionRequest(recreate_token=TOKEN, owner=NUL),
                               "owner"),
    "recreate-newline-request-id": Case(
        "RecreateSession", svc.RecreateSessionRequest(recreate_token=TOKEN, request_id=NEWLINE), "request_id"),
    # CompleteSession
    "complete-nul-id": Case("CompleteSession", svc.CompleteSessionRequest(session_id=NUL), "session_id"),
    "complete-empty-id": Case("CompleteSession", svc.CompleteSessionRequest(), "session_id"),
    "complete-long-id": Case("CompleteSession", svc.CompleteSessionRequest(session_id=LONG), "session_id"),
    "complete-unknown-id": Case("CompleteSession", svc.CompleteSessionRequest(session_id=UNKNOWN_ID), UNKNOWN_ID,
                                NOT_FOUND, "SESSION_NOT_FOUND"),
    # GetSessionInfo
    "get-empty-id": Case("GetSessionInfo", svc.GetSessionInfoRequest(), "session_id"),
    "get-long-id": Case("GetSessionInfo", svc.GetSessionInfoRequest(session_id=LONG_UTF8), "session_id"),
    "get-unknown-id": Case("GetSessionInfo", svc.GetSessionInfoRequest(session_id=UNKNOWN_ID), UNKNOWN_ID,
                           NOT_FOUND, "SESSION_NOT_FOUND"),
    "get-newline-id": Case("GetSessionInfo", svc.GetSessionInfoRequest(session_id=NEWLINE), "session_id"),
    # ExecuteActivity
    "activity-nul-session-id": Case("ExecuteActivity", _activity(session_id=NUL), "session_id"),
    "activity-escape-type": Case("ExecuteActivity", _activity(activity_type=ESCAPE), "activity_type"),
    "activity-empty-session-id": Case("ExecuteActivity", _activity(session_id=""), "session_id"),
    "activity-long-session-id": Case("ExecuteActivity", _activity(session_id=LONG), "session_id"),
    "activity-empty-type": Case("ExecuteActivity", _activity(activity_type=""), "activity_type"),
    "activity-long-type": Case("ExecuteActivity", _activity(activity_type=LONG), "activity_type"),
    "activity-negative-timeout": Case("ExecuteActivity", _activity(start_to_close_timeout=seconds(-1)),
                                      "start_to_close_timeout"),
    "activity-zero-timeout": Case("ExecuteActivity", _activity(start_to_close_timeout=seconds(0)),
                                  "start_to_close_timeout"),
    "activity-unknown-session": Case("ExecuteActivity", _activity(), UNKNOWN_ID, NOT_FOUND, "SESSION_NOT_FOUND"),
    # WatchSession
    "watch-empty-id": Case("WatchSession", svc.WatchSessionRequest(), "session_id"),
    "watch-long-id": Case("WatchSession", svc.WatchSessionRequest(session_id=LONG), "session_id"),
    "watch-unknown-id": Case("WatchSession", svc.WatchSessionRequest(session_id=UNKNOWN_ID), UNKNOWN_ID,
                             NOT_FOUND, "SESSION_NOT_FOUND"),
    "watch-nul-id": Case("WatchSession", svc.WatchSessionRequest(session_id=NUL), "session_id"),
    # ListSessions
    "list-sessions-superscript-page-token": Case("ListSessions", svc.ListSessionsRequest(page_token="\u00b2"),
                                                 "page_token"),
    "list-sessions-circled-page-token": Case("ListSessions", svc.ListSessionsRequest(page_token="\u2460"),
                                             "page_token"),
    "list-sessions-arabic-indic-page-token": Case("ListSessions", svc.ListSessionsRequest(page_token="\u0661"),
                                                  "page_token"),
    "list-sessions-nul-task-queue": Case("ListSessions", svc.ListSessionsRequest(task_queue=NUL), "task_queue"),
    "list-sessions-newline-owner": Case("ListSessions", svc.ListSessionsRequest(owner=NEWLINE), "owner"),
    "list-sessions-bad-page-token": Case("ListSessions", svc.ListSessionsRequest(page_token="abc"), "page_token"),
    "list-sessions-negative-page-token": Case("ListSessions", svc.ListSessionsRequest(page_token="-1"),
                                              "page_token"),
    "list-sessions-huge-page-token": Case("ListSessions", svc.ListSessionsRequest(page_token="9" * 40),
                                          "page_token"),
    "list-sessions-negative-page-size": Case("ListSessions", svc.ListSessionsRequest(page_size=-1), "page_size"),
    "list-sessions-unknown-state": Case("ListSessions", svc.ListSessionsRequest(state=99), "state"),  # type: ignore[arg-type]
    "list-sessions-long-task-queue": Case("ListSessions", svc.ListSessionsRequest(task_queue=LONG), "task_queue"),
    "list-sessions-long-owner": Case("ListSessions", svc.ListSessionsRequest(owner=LONG), "owner"),
    "list-sessions-bad-resource": Case("ListSessions", svc.ListSessionsRequest(resource="gpu 0"), "resource"),
    # ListWorkers
    "list-workers-bad-page-token": Case("ListWorkers", svc.ListWorkersRequest(page_token="next"), "page_token"),
    "list-workers-negative-page-size": Case("ListWorkers", svc.ListWorkersRequest(page_size=-5), "page_size"),
    "list-workers-long-task-queue": Case("ListWorkers", svc.ListWorkersRequest(task_queue=LONG), "task_queue"),
    "list-workers-deep-json-page-token": Case("ListWorkers", svc.ListWorkersRequest(page_token=DEEP_JSON_TOKEN),
                                              "page_token"),
    "list-workers-non-utf8-page-token": Case(
        "ListWorkers", svc.ListWorkersRequest(page_token=base64.urlsafe_b64encode(b"\xff\xfe[").decode()),
        "page_token"),
    "list-workers-escape-task-queue": Case("ListWorkers", svc.ListWorkersRequest(task_queue=ESCAPE), "task_queue"),
    # WorkerHeartbeat (the first message)
    "stream-first-heartbeat": Case(
        "WorkerHeartbeat", worker_pb2.WorkerHeartbeatRequest(heartbeat=worker_pb2.Heartbeat()), "register"),
    "stream-first-goodbye": Case(
        "WorkerHeartbeat", worker_pb2.WorkerHeartbeatRequest(goodbye=worker_pb2.Goodbye()), "register"),
    "stream-first-result": Case(
        "WorkerHeartbeat", worker_pb2.WorkerHeartbeatRequest(activity_result=worker_pb2.ActivityResult(
            activity_id="a", session_id=UNKNOWN_ID)), "register"),
    "stream-first-empty": Case("WorkerHeartbeat", worker_pb2.WorkerHeartbeatRequest(), "register"),
    "stream-register-empty-task-queue": Case("WorkerHeartbeat", _register(task_queue=""), "register.task_queue"),
    "stream-register-long-task-queue": Case("WorkerHeartbeat", _register(task_queue=LONG), "register.task_queue"),
    "stream-register-long-worker-id": Case("WorkerHeartbeat", _register(worker_id=LONG), "register.worker_id"),
    "stream-register-long-identity": Case("WorkerHeartbeat", _register(identity=LONG), "register.identity"),
    "stream-register-long-host-name": Case("WorkerHeartbeat", _register(host_name=LONG_UTF8), "register.host_name"),
    "stream-register-nul-task-queue": Case("WorkerHeartbeat", _register(task_queue=NUL), "register.task_queue"),
    "stream-register-newline-worker-id": Case("WorkerHeartbeat", _register(worker_id=NEWLINE),
                                              "register.worker_id"),
    "stream-register-escape-identity": Case("WorkerHeartbeat", _register(identity=ESCAPE), "register.identity"),
    "stream-register-nul-host-name": Case("WorkerHeartbeat", _register(host_name=NUL), "register.host_name"),
    "stream-register-negative-capacity": Case("WorkerHeartbeat", _register(max_concurrent_sessions=-1),
                                              "register.max_concurrent_sessions"),
    "stream-register-negative-resource": Case("WorkerHeartbeat", _register(capacities={"gpu": -1}),
                                              "register.capacities[gpu]"),
    "stream-register-huge-resource": Case("WorkerHeartbeat", _register(capacities={"scratch_gb": 10**13}),
                                          "register.capacities[scratch_gb]"),
    "stream-register-bad-resource-name": Case("WorkerHeartbeat", _register(capacities={"gpu,ssd": 1}),
                                              "register.capacities"),
    "stream-register-sessions-disagree": Case("WorkerHeartbeat", _register(max_concurrent_sessions=2,
                                                                           capacities={"sessions": 3}),
                                              "register.capacities[sessions]"),
    "stream-register-huge-sessions": Case("WorkerHeartbeat", _register(capacities={"sessions": 2_000_000}),
                                          "register.capacities[sessions]"),
    "stream-register-too-many-resources": Case("WorkerHeartbeat", _register(capacities={
        f"r{i}": 1 for i in range(33)}), "register.capacities"),
    "stream-register-bad-label-key": Case("WorkerHeartbeat", _register(labels={"zone a": "x"}), "register.labels"),
    "stream-register-bad-label-value": Case("WorkerHeartbeat", _register(labels={"zone": "a=b"}),
                                            "register.labels[zone]"),
    "stream-register-empty-label-value": Case("WorkerHeartbeat", _register(labels={"zone": ""}),
                                              "register.labels[zone]"),
    "stream-register-newline-label-value": Case("WorkerHeartbeat", _register(labels={"zone": NEWLINE}),
                                                "register.labels[zone]"),
    "stream-register-too-many-labels": Case("WorkerHeartbeat", _register(labels={f"k{i}": "v" for i in range(33)}),
                                            "register.labels"),
}


async def _invoke(sessiond: Sessiond, rpc: str, request: Message) -> None:
    """Call any RPC of the service to completion (streams are read to the end)."""
    if rpc == "WatchSession":
        async for _ in sessiond.stub.WatchSession(request, timeout=10):
            pass
    elif rpc == "WorkerHeartbeat":
        async def only() -> AsyncIterator[Message]:
            yield request

        async for _ in sessiond.stub.WorkerHeartbeat(only(), timeout=10):
            pass
    else:
        await getattr(sessiond.stub, rpc)(request, timeout=10)


def test_the_table_covers_every_rpc() -> None:
    rpcs = svc.DESCRIPTOR.services_by_name["SessionService"].methods_by_name
    assert {case.rpc for case in CASES.values()} == set(rpcs)


@pytest.mark.asyncio
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_bad_input_gets_the_documented_code_naming_the_field(sessiond: Sessiond, case: Case) -> None:
    error, info = await rpc_error(_invoke(sessiond, case.rpc, case.request), case.code, case.reason)

    assert case.field in (error.details() or ""), f"message does not name {case.field}: {error.details()}"
    if case.reason == "INVALID_ARGUMENT":
        assert info.metadata["field"] == case.field
    assert await sessiond.workers() == {}, "a rejected request registered a worker"


@pytest.mark.asyncio
async def test_names_of_exactly_256_bytes_are_accepted(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    queue = "q" * 256
    await make_worker("w" * 256, task_queue=queue, host_name="h" * 256, identity="é" * 128)

    session = await sessiond.create(queue, owner="o" * 256, request_id="r" * 256)

    assert session.state == OPEN and session.worker.worker_id == "w" * 256
    reply = await sessiond.stub.ExecuteActivity(svc.ExecuteActivityRequest(
        session_id=session.session_id, activity_type="a" * 256))
    assert reply.failure.type == "ActivityNotRegistered"  # it reached the worker


@pytest.mark.asyncio
async def test_pages_of_sessions_and_workers_follow_their_tokens(sessiond: Sessiond,
                                                                 make_worker: WorkerFactory) -> None:
    for index in range(3):
        await make_worker(f"w{index}", capacity=5)
    created = [await sessiond.create("q") for _ in range(5)]

    first = await sessiond.stub.ListSessions(svc.ListSessionsRequest(page_size=2))
    rest = await sessiond.sessions()
    workers = await sessiond.stub.ListWorkers(svc.ListWorkersRequest(page_size=2))
    more = await sessiond.stub.ListWorkers(svc.ListWorkersRequest(page_size=2, page_token=workers.next_page_token))

    assert [s.session_id for s in first.sessions] == [s.session_id for s in created[:2]]
    assert first.next_page_token
    assert [s.session_id for s in rest] == [s.session_id for s in created]
    assert [w.worker_id for w in [*workers.workers, *more.workers]] == ["w0", "w1", "w2"]
    assert more.next_page_token == ""


@pytest.mark.asyncio
@pytest.mark.parametrize("request_", [
    pytest.param(_create(resources={"x" * 70_000: 1}), id="resource-name"),
    pytest.param(_create(selector="x" * 70_000), id="selector"),
])
async def test_a_huge_name_is_refused_without_echoing_it(sessiond: Sessiond, request_: Message) -> None:
    error, _ = await rpc_error(sessiond.stub.CreateSession(request_, timeout=10), INVALID, "INVALID_ARGUMENT")
    assert len(error.details() or "") < 300
