"""Session lifecycle over the wire: create → OPEN → complete → CLOSED, and terminal states stay put."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from sessiond_client.api.v1 import session_pb2, session_service_pb2

from tests.integration.conftest import (
    CLOSED,
    FAILED,
    OPEN,
    QUEUE,
    ServerFactory,
    Sessiond,
    WorkerFactory,
    eventually,
    options,
    rpc_error,
)
from tests.integration.rawworker import RawWorker


@pytest.mark.asyncio
async def test_create_places_an_open_session_on_the_registered_worker_with_its_host_name(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1", host_name="host-a", identity="42@host-a")

    session = await sessiond.create(QUEUE)

    assert session.state == OPEN
    assert session.task_queue == QUEUE
    assert (session.worker.worker_id, session.worker.host_name, session.worker.identity) == \
        ("w1", "host-a", "42@host-a")
    assert session.session_id and session.recreate_token
    assert session.create_time.ToDatetime() <= session.expire_time.ToDatetime()
    assert not session.HasField("close_time") and not session.HasField("failure")
    # The worker holds it too: SessionStarted came down its stream.
    await eventually(lambda: session.session_id in worker.held)


@pytest.mark.asyncio
async def test_get_returns_the_same_session_as_create(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", host_name="host-a")
    created = await sessiond.create(QUEUE, owner="alice")

    reply = await sessiond.stub.GetSessionInfo(session_service_pb2.GetSessionInfoRequest(session_id=created.session_id))

    assert reply.session == created
    assert reply.server_incarnation == sessiond.server.engine.incarnation


@pytest.mark.asyncio
async def test_complete_closes_the_session_and_frees_the_slot(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1", capacity=1)
    session = await sessiond.create(QUEUE)

    closed = await sessiond.complete(session.session_id)

    assert closed.state == CLOSED and closed.HasField("close_time") and not closed.HasField("failure")
    assert (await sessiond.get(session.session_id)).state == CLOSED
    assert (await sessiond.workers())["w1"].open_sessions == 0
    await eventually(lambda: worker.ended.get(session.session_id) == {"state": "SESSION_STATE_CLOSED",
                                                                       "cause": "FAILURE_CAUSE_UNSPECIFIED"})
    # The one slot is free: a create that must not wait gets it.
    again = await sessiond.create(QUEUE, options=options(creation=0))
    assert again.state == OPEN and again.worker.worker_id == "w1"


@pytest.mark.asyncio
async def test_complete_is_idempotent(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1")
    session = await sessiond.create(QUEUE)
    first = await sessiond.complete(session.session_id)

    second = await sessiond.complete(session.session_id)

    assert second.state == CLOSED
    assert second.close_time == first.close_time


@pytest.mark.asyncio
async def test_complete_on_a_failed_session_leaves_it_failed(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE)
    await worker.goodbye(drain=False)  # fails its open sessions with WORKER_SHUTDOWN
    failed = await eventually(lambda: _failed(sessiond, session.session_id))

    after = await sessiond.complete(session.session_id)

    assert after.state == FAILED
    assert after.failure.cause == session_pb2.FAILURE_CAUSE_WORKER_SHUTDOWN
    assert after.close_time == failed.close_time
    assert (await sessiond.get(session.session_id)).state == FAILED


@pytest.mark.asyncio
async def test_terminal_sessions_are_forgotten_after_retention(make_server: ServerFactory) -> None:
    server = await make_server(retention=timedelta(seconds=0.3))
    async with RawWorker(server.target, QUEUE, worker_id="w1"):
        session = await server.create(QUEUE)
        await server.complete(session.session_id)
        assert (await server.get(session.session_id)).state == CLOSED

        async def gone() -> bool:
            try:
                await server.get(session.session_id)
            except grpc.aio.AioRpcError as error:
                return error.code() == grpc.StatusCode.NOT_FOUND
            return False

        await eventually(gone, timeout=5)
        await rpc_error(server.stub.GetSessionInfo(session_service_pb2.GetSessionInfoRequest(
            session_id=session.session_id)), grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


@pytest.mark.asyncio
async def test_every_server_start_has_a_new_incarnation_sent_to_workers_and_callers(
        make_server: ServerFactory) -> None:
    first, second = await make_server(), await make_server()
    async with RawWorker(first.target, QUEUE, worker_id="w1") as worker:
        session = await first.create(QUEUE)
        reply = await first.stub.GetSessionInfo(session_service_pb2.GetSessionInfoRequest(
            session_id=session.session_id))
        assert worker.incarnation == reply.server_incarnation != ""
    assert first.server.engine.incarnation != second.server.engine.incarnation


async def _failed(sessiond: Sessiond, session_id: str) -> session_pb2.Session | None:
    session = await sessiond.get(session_id)
    return session if session.state == FAILED else None


@pytest.mark.asyncio
async def test_a_watch_that_races_the_end_of_its_session_still_gets_the_terminal_state(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1", capacity=5)
    endings: list[list[int]] = []
    for attempt in range(100):
        session = await sessiond.create(QUEUE)
        watch = sessiond.stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=session.session_id))

        async def complete_soon(spins: int = attempt % 5, session_id: str = session.session_id) -> None:
            for _ in range(spins):  # vary where the completion lands relative to the first message
                await asyncio.sleep(0)
            await sessiond.complete(session_id)

        completing = asyncio.create_task(complete_soon())
        states = [reply.session.state async for reply in watch]
        await completing
        endings.append(states)

    assert all(states[-1] == CLOSED for states in endings), [s for s in endings if s[-1] != CLOSED][:3]
    assert all(states in ([OPEN, CLOSED], [CLOSED]) for states in endings)
