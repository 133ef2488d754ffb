"""Activities: pinned to the session's worker, failures in the response, and every way one can end."""

from __future__ import annotations

import asyncio
import json
import signal

import grpc
import pytest
from sessiond_client.api.v1 import session_pb2, session_service_pb2

from tests.integration.conftest import (
    OPEN,
    QUEUE,
    ProcessFactory,
    Sessiond,
    WorkerFactory,
    eventually,
    rpc_error,
)


@pytest.mark.asyncio
async def test_every_activity_of_a_session_reaches_its_worker_and_no_other_of_three(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    workers = {w.worker_id: w for w in [await make_worker(f"w{i}", capacity=4) for i in range(3)]}
    sessions = [await sessiond.create(QUEUE) for _ in range(6)]
    assert {s.worker.worker_id for s in sessions} == set(workers)  # spread: most free slots first

    runs = [(s, sessiond.execute(s.session_id, "record")) for s in sessions for _ in range(5)]
    results = await asyncio.gather(*(call for _, call in runs))

    for (session, _), reply in zip(runs, results, strict=True):
        assert json.loads(reply.result.data) == session.worker.worker_id
    for worker_id, worker in workers.items():
        mine = {s.session_id for s in sessions if s.worker.worker_id == worker_id}
        assert {r["session_id"] for r in worker.ran} == mine
        assert len(worker.ran) == 5 * len(mine)
        assert worker.rejected == []


@pytest.mark.asyncio
async def test_an_activity_result_comes_back_unchanged_with_headers_forwarded(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE)
    payload = session_pb2.Payload(metadata={"encoding": b"binary/plain", "x": b"\x00\xff"}, data=b"\x00raw\xff")

    reply = await sessiond.stub.ExecuteActivity(session_service_pb2.ExecuteActivityRequest(
        session_id=session.session_id, activity_type="echo", input=payload, headers={"traceparent": "00-abc-01"}))

    assert reply.WhichOneof("outcome") == "result" and reply.result == payload
    assert worker.ran[-1]["headers"].items() >= {"traceparent": "00-abc-01"}.items()


@pytest.mark.asyncio
async def test_an_activity_failure_comes_back_in_the_response_and_the_session_stays_open(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1")
    session = await sessiond.create(QUEUE)

    reply = await sessiond.execute(session.session_id, "fail", "boom")

    assert reply.WhichOneof("outcome") == "failure"
    assert (reply.failure.type, reply.failure.message, reply.failure.non_retryable) == ("TestFailure", "boom", True)
    assert json.loads(reply.failure.details.data) == {"worker_id": "w1"}
    assert (await sessiond.get(session.session_id)).state == OPEN
    assert json.loads((await sessiond.execute(session.session_id, "echo", 7)).result.data) == 7


@pytest.mark.asyncio
async def test_an_activity_in_flight_when_the_worker_process_dies_is_aborted_session_failed(
        sessiond: Sessiond, spawn_worker: ProcessFactory) -> None:
    process = await spawn_worker("doomed")
    session = await sessiond.create(QUEUE)
    running = asyncio.create_task(sessiond.execute(session.session_id, "sleep", 60, start_to_close=120))
    await process.wait_for("activity_started", session_id=session.session_id)

    process.signal(signal.SIGKILL)

    _, info = await rpc_error(running, grpc.StatusCode.ABORTED, "SESSION_FAILED")
    assert info.metadata["session_id"] == session.session_id
    assert info.metadata["cause"] == "WORKER_LOST"


@pytest.mark.asyncio
async def test_an_activity_in_flight_when_the_session_completes_is_aborted_and_cancelled_on_the_worker(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE)
    running = asyncio.create_task(sessiond.execute(session.session_id, "sleep", 60))
    await eventually(lambda: worker.ran)

    await sessiond.complete(session.session_id)

    await rpc_error(running, grpc.StatusCode.ABORTED, "SESSION_COMPLETED")
    activity_id = worker.ran[0]["activity_id"]
    await eventually(lambda: worker.cancelled.get(activity_id) == "SESSION_COMPLETED")


@pytest.mark.asyncio
async def test_a_new_activity_on_a_failed_session_is_refused_and_never_sent(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE)
    await worker.goodbye(drain=False)
    await eventually(lambda: session.session_id in worker.ended)

    _, info = await rpc_error(sessiond.execute(session.session_id, "echo", 1),
                              grpc.StatusCode.FAILED_PRECONDITION, "SESSION_FAILED")

    assert info.metadata["cause"] == "WORKER_SHUTDOWN"
    assert worker.ran == [] and worker.rejected == []


@pytest.mark.asyncio
async def test_a_new_activity_on_a_closed_session_is_refused_and_never_sent(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE)
    await sessiond.complete(session.session_id)

    _, info = await rpc_error(sessiond.execute(session.session_id, "echo", 1),
                              grpc.StatusCode.FAILED_PRECONDITION, "SESSION_CLOSED")

    assert info.metadata["session_id"] == session.session_id
    assert worker.ran == [] and worker.rejected == []


@pytest.mark.asyncio
async def test_an_activity_past_its_start_to_close_timeout_times_out_and_the_worker_is_told_to_cancel(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE)
    loop = asyncio.get_running_loop()
    started = loop.time()

    await rpc_error(sessiond.execute(session.session_id, "sleep", 60, start_to_close=0.3),
                    grpc.StatusCode.DEADLINE_EXCEEDED, "ACTIVITY_TIMEOUT")

    assert loop.time() - started >= 0.3
    activity_id = worker.ran[0]["activity_id"]
    await eventually(lambda: worker.cancelled.get(activity_id) == "ACTIVITY_TIMEOUT")
    assert (await sessiond.get(session.session_id)).state == OPEN
    assert json.loads((await sessiond.execute(session.session_id, "echo", "still here")).result.data) == "still here"


@pytest.mark.asyncio
async def test_a_caller_that_cancels_an_activity_gets_it_cancelled_on_the_worker(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE)
    call = sessiond.stub.ExecuteActivity(session_service_pb2.ExecuteActivityRequest(
        session_id=session.session_id, activity_type="sleep", input=session_pb2.Payload(data=b"60")))
    await eventually(lambda: worker.ran)

    call.cancel()

    activity_id = worker.ran[0]["activity_id"]
    await eventually(lambda: activity_id in worker.cancelled)
    assert (await sessiond.get(session.session_id)).state == OPEN
