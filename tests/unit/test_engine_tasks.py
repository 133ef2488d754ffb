"""Activity tasks as the engine queues them for a worker: each carries its session's resources, its
own start_to_close timeout, and the worker's current heartbeat interval and the server incarnation
(parts of a task are copied from a template per interval, resources and timeout; a template must
never leak one session's or one moment's values into another task).

In-process: the real engine and core on the test's loop, the worker played by reading its
connection's queue and answering through ``Engine.worker_message``."""

from __future__ import annotations

import asyncio

import pytest
from sessiond_client.api.v1 import session_pb2, worker_pb2

from sessiond.config import ServerConfig
from sessiond.core.model import SessionOptions, WorkerRegistration
from sessiond.core.resources import ResourceVector
from sessiond.server.engine import Engine
from sessiond.server.worker_connection import WorkerConnection

pytestmark = pytest.mark.asyncio


async def _task(engine: Engine, conn: WorkerConnection, session_id: str,
                timeout: float) -> worker_pb2.WorkerHeartbeatResponse:
    """Run one activity; returns the stream message that carried its task."""
    call = asyncio.ensure_future(engine.execute_activity(session_id, "noop", session_pb2.Payload(data=b"x"),
                                                         timeout, {}))
    while True:  # skip SessionStarted and other control messages
        message = await asyncio.wait_for(conn.next(), 5.0)
        assert message is not None
        if message.HasField("activity_task"):
            break
    task = message.activity_task
    engine.worker_message(conn, worker_pb2.WorkerHeartbeatRequest(activity_result=worker_pb2.ActivityResult(
        activity_id=task.activity_id, session_id=task.session_id, result=task.input)))
    response = await asyncio.wait_for(call, 5.0)
    assert response.result.data == b"x"
    return message


async def test_each_task_carries_its_sessions_resources_timeout_and_the_current_interval() -> None:
    engine = Engine(ServerConfig())
    try:
        conn = engine.connect_worker(WorkerRegistration(
            "q", "w1", "id", "h", ResourceVector({"sessions": 4, "gpu": 2})))
        plain = await engine.create_session("q", SessionOptions(heartbeat_timeout=30.0), owner="",
                                            request_id="")
        first = await _task(engine, conn, plain.session_id, 5.0)
        assert first.server_incarnation == engine.incarnation
        assert first.heartbeat_interval.ToTimedelta().total_seconds() == 10.0
        assert dict(first.activity_task.resources) == {"sessions": 1}
        assert first.activity_task.start_to_close_timeout.ToTimedelta().total_seconds() == 5.0

        # A session with a shorter heartbeat_timeout shortens the worker's interval (a third of it):
        # the next task of the first session says so too, with its own resources still.
        gpu = await engine.create_session("q", SessionOptions(heartbeat_timeout=3.0), owner="", request_id="",
                                          demand=ResourceVector({"sessions": 1, "gpu": 1}))
        again = await _task(engine, conn, plain.session_id, 5.0)
        assert again.heartbeat_interval.ToTimedelta().total_seconds() == 1.0
        assert dict(again.activity_task.resources) == {"sessions": 1}
        assert again.activity_task.activity_id != first.activity_task.activity_id

        other = await _task(engine, conn, gpu.session_id, 7.5)
        assert dict(other.activity_task.resources) == {"sessions": 1, "gpu": 1}
        assert other.activity_task.start_to_close_timeout.ToTimedelta().total_seconds() == 7.5
        assert other.activity_task.session_id == gpu.session_id
        assert other.server_incarnation == engine.incarnation

        # The template for (interval, resources, timeout) is not changed by the tasks built from it.
        repeat = await _task(engine, conn, plain.session_id, 5.0)
        assert repeat.activity_task.activity_type == "noop"
        assert repeat.activity_task.input.data == b"x"
        assert dict(repeat.activity_task.resources) == {"sessions": 1}
        assert repeat.activity_task.session_id == plain.session_id
    finally:
        engine.stop()
