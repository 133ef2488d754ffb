"""Any gRPC language: a Node.js caller (@grpc/grpc-js + proto-loader, the .proto files, no codegen)
drives a session on a real Python SessionWorker through a live server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from sessiond_client import ApplicationError, SessionWorker, activity
from sessiond_client.api.v1 import session_pb2

from tests.integration.conftest import Sessiond
from tests.interop.conftest import REPO_ROOT, run_client

CLIENT = REPO_ROOT / "interop" / "node" / "client.js"
QUEUE = "interop-node"
_MISSING = "node_modules/@grpc/grpc-js is missing: run `make node_modules` (npm ci)"

# Under CI a missing component is a failure, never a skip (make test installs node_modules first).
pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(not (REPO_ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir()
                       and os.environ.get("CI") != "true", reason=_MISSING),
]


@activity.defn
async def echo(value: Any) -> Any:
    """Return the one argument."""
    return value


@activity.defn
async def fail(message: str) -> None:
    """Fail with a custom, non-retryable type."""
    raise ApplicationError(message, type="TestFailure", non_retryable=True)


WorkerStarter = Callable[..., Awaitable[SessionWorker]]


@pytest_asyncio.fixture
async def python_worker(sessiond: Sessiond) -> AsyncIterator[WorkerStarter]:
    """Start real SessionWorkers (echo, fail) on ``sessiond``; stopped at teardown."""
    running: list[tuple[SessionWorker, asyncio.Task[None]]] = []

    async def start(worker_id: str, *, task_queue: str = QUEUE, **options: Any) -> SessionWorker:
        worker = SessionWorker(sessiond.target, task_queue, [echo, fail], worker_id=worker_id, **options)
        running.append((worker, asyncio.create_task(worker.run())))
        await asyncio.wait_for(worker.wait_registered(), 10)
        return worker

    yield start
    for worker, task in running:
        worker.shutdown(drain=False)
        await asyncio.wait_for(task, 10)


def node() -> str:
    found = shutil.which("node")
    assert found is not None, "node_modules is installed but `node` is not on PATH"
    return found


@pytest.mark.asyncio
async def test_a_node_caller_runs_an_activity_on_a_python_worker_and_completes_the_session(
        sessiond: Sessiond, python_worker: WorkerStarter) -> None:
    await python_worker("py-worker", host_name="python-host", identity="7@python-host")
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
    # The server agrees with what Node saw.
    session = await sessiond.get(session_id)
    assert session.state == session_pb2.SESSION_STATE_CLOSED and session.worker.worker_id == "py-worker"


@pytest.mark.asyncio
async def test_a_failing_activity_exits_1_and_the_node_caller_still_completes_its_session(
        sessiond: Sessiond, python_worker: WorkerStarter) -> None:
    await python_worker("py-worker")

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
