"""The activity-heartbeat protocol on the wire, with a raw worker: the task carries heartbeat_timeout,
attempt and the previous details; ActivityHeartbeat messages keep an activity alive and their latest
details come back with the outcome; silence ends the call in-band (`heartbeat_timeout`) and the worker
is told to cancel; heartbeats for an activity that is not in flight on that worker change nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from sessiond_client.api.v1 import session_pb2, session_service_pb2, worker_pb2

from tests.integration.conftest import OPEN, Sessiond, WorkerFactory, eventually, rpc_error, seconds
from tests.integration.rawworker import RawWorker, json_payload


def _request(session_id: str, value: Any, **fields: Any) -> session_service_pb2.ExecuteActivityRequest:
    return session_service_pb2.ExecuteActivityRequest(
        session_id=session_id, activity_type="sleep", input=json_payload(value), **fields)


def _record_tasks(worker: RawWorker) -> list[worker_pb2.ActivityTask]:
    tasks: list[worker_pb2.ActivityTask] = []
    on_task = worker._on_task

    def recording(task: worker_pb2.ActivityTask) -> None:
        tasks.append(task)
        on_task(task)

    worker._on_task = recording  # type: ignore[method-assign]
    return tasks


def _beat(worker: RawWorker, activity_id: str, session_id: str, details: Any = None) -> None:
    worker._send(worker_pb2.WorkerHeartbeatRequest(activity_heartbeat=worker_pb2.ActivityHeartbeat(
        activity_id=activity_id, session_id=session_id,
        details=None if details is None else json_payload(details))))


@pytest.mark.asyncio
async def test_a_silent_activity_ends_in_band_with_its_last_details_and_the_worker_is_told_to_cancel(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w")
    tasks = _record_tasks(worker)
    session = await sessiond.create()
    call = asyncio.ensure_future(sessiond.stub.ExecuteActivity(_request(
        session.session_id, 30, heartbeat_timeout=seconds(1.0), attempt=2,
        heartbeat_details=json_payload({"resume_at": 7})), timeout=30))
    await eventually(lambda: tasks, message="the worker got the task")
    [task] = tasks
    assert task.heartbeat_timeout.ToTimedelta().total_seconds() == 1.0
    assert task.attempt == 2
    assert json.loads(task.heartbeat_details.data) == {"resume_at": 7}

    _beat(worker, task.activity_id, "some-other-session", {"ignored": True})  # not in flight there: dropped
    _beat(worker, task.activity_id, session.session_id, {"n": 1})
    _beat(worker, task.activity_id, session.session_id, {"n": 2})
    response = await call

    assert response.WhichOneof("outcome") == "heartbeat_timeout"
    assert response.heartbeat_timeout.type == "ActivityHeartbeatTimeout"
    assert not response.heartbeat_timeout.non_retryable
    assert json.loads(response.heartbeat_details.data) == {"n": 2}
    await eventually(lambda: worker.cancelled.get(task.activity_id) == "ACTIVITY_HEARTBEAT_TIMEOUT")
    assert (await sessiond.get(session.session_id)).state == OPEN


@pytest.mark.asyncio
async def test_heartbeats_keep_an_activity_alive_past_its_heartbeat_timeout(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w")
    tasks = _record_tasks(worker)
    session = await sessiond.create()
    call = asyncio.ensure_future(sessiond.stub.ExecuteActivity(_request(
        session.session_id, 2.5, heartbeat_timeout=seconds(1.0)), timeout=30))
    await eventually(lambda: tasks)
    beats = 0
    while not call.done():  # a live activity: a heartbeat every 0.1 s (ten per timeout)
        _beat(worker, tasks[0].activity_id, session.session_id, {"beat": beats})
        beats += 1
        await asyncio.sleep(0.1)
    response = call.result()
    assert response.WhichOneof("outcome") == "result" and json.loads(response.result.data) == 2.5
    assert json.loads(response.heartbeat_details.data)["beat"] >= 8
    assert tasks[0].activity_id not in worker.cancelled


@pytest.mark.asyncio
async def test_without_heartbeats_a_result_has_no_details_and_attempt_defaults_to_zero(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w")
    tasks = _record_tasks(worker)
    session = await sessiond.create()
    response = await sessiond.stub.ExecuteActivity(
        session_service_pb2.ExecuteActivityRequest(session_id=session.session_id, activity_type="echo",
                                                   input=json_payload([1])), timeout=30)
    assert response.WhichOneof("outcome") == "result" and not response.HasField("heartbeat_details")
    assert tasks[0].attempt == 0 and not tasks[0].HasField("heartbeat_timeout")
    assert not tasks[0].HasField("heartbeat_details")


@pytest.mark.asyncio
@pytest.mark.parametrize(("fields", "field"), [
    ({"heartbeat_timeout": seconds(-1)}, "heartbeat_timeout"),
    ({"heartbeat_timeout": seconds(0)}, "heartbeat_timeout"),
    ({"attempt": -1}, "attempt"),
])
async def test_bad_heartbeat_fields_are_invalid_arguments_naming_the_field(
        sessiond: Sessiond, make_worker: WorkerFactory, fields: dict[str, Any], field: str) -> None:
    await make_worker("w")
    session = await sessiond.create()
    _, info = await rpc_error(sessiond.stub.ExecuteActivity(_request(session.session_id, 0, **fields)),
                              grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert info.metadata["field"] == field


def test_the_new_fields_use_issue_14s_numbers() -> None:
    numbers = {
        (m.full_name, f.name): f.number
        for m in (worker_pb2.ActivityTask.DESCRIPTOR, worker_pb2.WorkerHeartbeatRequest.DESCRIPTOR,
                  session_service_pb2.ExecuteActivityRequest.DESCRIPTOR,
                  session_service_pb2.ExecuteActivityResponse.DESCRIPTOR)
        for f in m.fields if ("heartbeat" in f.name and f.name != "heartbeat") or f.name == "attempt"
    }
    assert numbers == {
        ("sessiond.v1.ActivityTask", "heartbeat_timeout"): 9,
        ("sessiond.v1.ActivityTask", "attempt"): 10,
        ("sessiond.v1.ActivityTask", "heartbeat_details"): 11,
        ("sessiond.v1.WorkerHeartbeatRequest", "activity_heartbeat"): 7,
        ("sessiond.v1.ExecuteActivityRequest", "heartbeat_timeout"): 6,
        ("sessiond.v1.ExecuteActivityRequest", "attempt"): 7,
        ("sessiond.v1.ExecuteActivityRequest", "heartbeat_details"): 8,
        ("sessiond.v1.ExecuteActivityResponse", "heartbeat_timeout"): 3,
        ("sessiond.v1.ExecuteActivityResponse", "heartbeat_details"): 5,
    }
    assert session_pb2.Payload.DESCRIPTOR.full_name == "sessiond.v1.Payload"
