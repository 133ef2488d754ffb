"""Any gRPC tool: a Python client with no .proto files and no generated sessiond stubs discovers
SessionService by server reflection and reads a session with generic calls.

It runs as a subprocess: this test process has the generated stubs in its default descriptor
pool, which would make the proof worthless.
"""

from __future__ import annotations

import sys

import pytest
from sessiond_client.api.v1 import session_service_pb2

from tests.integration.conftest import Sessiond, WorkerFactory
from tests.interop.conftest import REPO_ROOT, run_client

CLIENT = REPO_ROOT / "interop" / "reflection_client.py"
QUEUE = "interop-reflection"
SERVICE = session_service_pb2.DESCRIPTOR.services_by_name["SessionService"]


@pytest.mark.asyncio
async def test_reflection_alone_finds_the_service_its_methods_and_reads_a_session(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("rw", task_queue=QUEUE, host_name="reflect-host")
    session = await sessiond.create(QUEUE, owner="reflector")

    finished = await run_client(sys.executable, str(CLIENT), "--target", sessiond.target,
                                "--session-id", session.session_id)

    assert finished.code == 0, finished.err
    seen = finished.json_line()
    assert seen["imported_sessiond_stubs"] == []
    assert {"sessiond.v1.SessionService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(seen["services"])
    assert seen["service"] == SERVICE.full_name
    # Reflection serves exactly the contract the generated stubs were made from.
    assert [(m["name"], m["input_type"], m["output_type"], m["client_streaming"], m["server_streaming"])
            for m in seen["methods"]] == [
        (m.name, m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
        for m in SERVICE.methods]
    assert {"sessiond/v1/session_service.proto", "sessiond/v1/session.proto", "sessiond/v1/worker.proto",
            "google/protobuf/duration.proto", "google/protobuf/timestamp.proto"} <= set(seen["files"])
    read = seen["session"]
    assert read["session_id"] == session.session_id
    assert (read["state"], read["owner"], read["task_queue"]) == ("SESSION_STATE_OPEN", "reflector", QUEUE)
    assert read["worker"]["host_name"] == "reflect-host"
    assert seen["server_incarnation"] == sessiond.server.engine.incarnation


@pytest.mark.asyncio
async def test_without_an_id_the_reflection_client_lists_sessions_and_reads_the_newest(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("rw", task_queue=QUEUE, capacity=2)
    await sessiond.create(QUEUE)
    newest = await sessiond.complete((await sessiond.create(QUEUE)).session_id)

    finished = await run_client(sys.executable, str(CLIENT), "--target", sessiond.target)

    assert finished.code == 0, finished.err
    seen = finished.json_line()
    assert seen["listed_sessions"] == 2
    assert (seen["session"]["session_id"], seen["session"]["state"]) == (newest.session_id, "SESSION_STATE_CLOSED")


@pytest.mark.asyncio
async def test_the_reflection_client_reports_a_grpc_error_with_its_code(sessiond: Sessiond) -> None:
    finished = await run_client(sys.executable, str(CLIENT), "--target", sessiond.target, "--session-id", "missing")

    assert finished.code == 1 and finished.out == ""
    assert finished.error() == {"code": "NOT_FOUND", "details": "session 'missing' not found"}
