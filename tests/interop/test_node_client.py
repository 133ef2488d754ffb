"""Any gRPC language: a Node.js caller (@grpc/grpc-js + proto-loader, the .proto files, no codegen)
drives a session on a Python worker through a live server."""

from __future__ import annotations

import json
import shutil

import pytest
from sessiond_client.api.v1 import session_pb2

from tests.integration.conftest import Sessiond, WorkerFactory
from tests.interop.conftest import REPO_ROOT, run_client

CLIENT = REPO_ROOT / "interop" / "node" / "client.js"
QUEUE = "interop-node"

pytestmark = pytest.mark.skipif(
    not (REPO_ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir(),
    reason="node_modules/@grpc/grpc-js is missing: run `make node_modules` (npm ci); CI always installs it",
)


def node() -> str:
    found = shutil.which("node")
    assert found is not None, "node_modules is installed but `node` is not on PATH"
    return found


@pytest.mark.asyncio
async def test_a_node_caller_runs_an_activity_on_a_python_worker_and_completes_the_session(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("py-worker", task_queue=QUEUE, host_name="python-host", identity="7@python-host")
    value = {"from": "node", "numbers": [1, 2, 3], "text": "héllo"}

    finished = await run_client(node(), str(CLIENT), "--target", sessiond.target, "--task-queue", QUEUE,
                                "--activity", "echo", "--input", json.dumps(value))

    assert finished.code == 0, finished.err
    seen = finished.json_line()
    session_id = seen["session_id"]
    assert seen["task_queue"] == QUEUE
    assert seen["worker"] == {"worker_id": "py-worker", "identity": "7@python-host", "host_name": "python-host"}
    assert seen["activity"] == {"type": "echo", "result": value}  # JSON payload round trip, both ways
    assert seen["state_before_complete"] == "SESSION_STATE_OPEN"
    assert seen["state_after_complete"] == seen["state_read_back"] == "SESSION_STATE_CLOSED"
    assert seen["server_incarnation"] == sessiond.server.engine.incarnation
    assert seen["create_time"] and seen["close_time"]
    # The server and the worker agree with what Node saw.
    assert (await sessiond.get(session_id)).state == session_pb2.SESSION_STATE_CLOSED
    assert [r["session_id"] for r in worker.ran if r["activity_type"] == "echo"] == [session_id]
    assert worker.started == [session_id]
    assert worker.ended[session_id]["state"] == "SESSION_STATE_CLOSED"


@pytest.mark.asyncio
async def test_a_failing_activity_exits_1_and_the_node_caller_still_completes_its_session(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("py-worker", task_queue=QUEUE)

    finished = await run_client(node(), str(CLIENT), "--target", sessiond.target, "--task-queue", QUEUE,
                                "--activity", "fail", "--input", json.dumps("boom"))

    assert finished.code == 1 and finished.out == ""
    assert finished.error() == {"activity_failure": {"type": "TestFailure", "message": "boom", "non_retryable": True}}
    sessions = await sessiond.sessions(task_queue=QUEUE)
    assert [s.state for s in sessions] == [session_pb2.SESSION_STATE_CLOSED]


@pytest.mark.asyncio
async def test_a_grpc_error_reaches_the_node_caller_as_its_status_code(sessiond: Sessiond) -> None:
    # No worker on the queue: CreateSession waits out its creation_timeout (the client's --timeout).
    finished = await run_client(node(), str(CLIENT), "--target", sessiond.target, "--task-queue", "nobody-here",
                                "--timeout", "0.5")

    assert finished.code == 1 and finished.out == ""
    error = finished.error()
    assert (error["rpc"], error["code"]) == ("CreateSession", "DEADLINE_EXCEEDED")
    assert "nobody-here" in error["details"]
