"""The drain before a restart (SIGTERM, ``--drain-timeout``): activities a worker runs finish and
their callers get their results; anything that would start new work is refused with RECOVERING
(nothing was sent, so every client may repeat it); the drain ends with the last activity, or at its
timeout, after which the stop cuts the rest with SHUTTING_DOWN as before.

In-process: the real engine and core on the test's loop, the worker played by reading its
connection's queue and answering through ``Engine.worker_message``."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sessiond_client.api.v1 import session_pb2, session_service_pb2, worker_pb2

from sessiond.config import ServerConfig
from sessiond.core.errors import RecoveringError, SessionNotFoundError, ShuttingDownError
from sessiond.core.model import SessionOptions, SessionState, WorkerRegistration
from sessiond.core.resources import ResourceVector
from sessiond.server.engine import Engine
from sessiond.server.worker_connection import WorkerConnection

pytestmark = pytest.mark.asyncio

Call = asyncio.Future[session_service_pb2.ExecuteActivityResponse]


def _engine() -> tuple[Engine, WorkerConnection]:
    engine = Engine(ServerConfig(recovery_window=timedelta(0)))  # not a restart: unknown ids are unknown
    conn = engine.connect_worker(WorkerRegistration("q", "w1", "id", "h", ResourceVector({"sessions": 3})))
    return engine, conn


async def _queued(conn: WorkerConnection) -> list[worker_pb2.WorkerHeartbeatResponse]:
    """What is queued for the worker now (taken off the queue)."""
    out = []
    while conn.queued_bytes:
        message = await conn.next()
        assert message is not None
        out.append(message)
    return out


async def _tasks(conn: WorkerConnection) -> list[worker_pb2.ActivityTask]:
    return [m.activity_task for m in await _queued(conn) if m.HasField("activity_task")]


async def _start(engine: Engine, session_id: str) -> Call:
    call = asyncio.ensure_future(engine.execute_activity(session_id, "work", session_pb2.Payload(data=b"in"),
                                                         60.0, {}))
    await asyncio.sleep(0)  # it sends its task and waits for the outcome
    return call


def _answer(engine: Engine, conn: WorkerConnection, task: worker_pb2.ActivityTask, data: bytes) -> None:
    engine.worker_message(conn, worker_pb2.WorkerHeartbeatRequest(activity_result=worker_pb2.ActivityResult(
        activity_id=task.activity_id, session_id=task.session_id, result=session_pb2.Payload(data=data))))


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_the_drain_waits_for_the_activities_in_flight_and_ends_when_the_last_answers() -> None:
    engine, conn = _engine()
    try:
        one = await engine.create_session("q", SessionOptions(), owner="", request_id="")
        two = await engine.create_session("q", SessionOptions(), owner="", request_id="")
        first, second = await _start(engine, one.session_id), await _start(engine, two.session_id)
        tasks = {t.session_id: t for t in await _tasks(conn)}
        assert set(tasks) == {one.session_id, two.session_id}

        drain = asyncio.ensure_future(engine.drain(60.0))
        await _turns()
        assert engine.draining and not drain.done()
        _answer(engine, conn, tasks[one.session_id], b"one")
        assert (await asyncio.wait_for(first, 5)).result.data == b"one"
        await _turns()
        assert not drain.done(), "the drain ended with an activity still in flight"

        _answer(engine, conn, tasks[two.session_id], b"two")
        assert (await asyncio.wait_for(second, 5)).result.data == b"two"
        assert await asyncio.wait_for(drain, 5) == (2, 0)
        # Nothing failed, and the worker was not told anything yet (the stop does that after).
        assert engine.get_session(one.session_id).state is SessionState.OPEN
        assert not conn.closed
        assert not any(m.HasField("server_restarting") for m in await _queued(conn))
    finally:
        engine.stop()


async def test_new_work_is_refused_with_recovering_and_never_reaches_the_worker_while_the_rest_works() -> None:
    engine, conn = _engine()
    try:
        busy = await engine.create_session("q", SessionOptions(), owner="", request_id="")
        idle = await engine.create_session("q", SessionOptions(), owner="", request_id="")
        full = await engine.create_session("q", SessionOptions(), owner="", request_id="")
        waiting = asyncio.ensure_future(engine.create_session("q", SessionOptions(creation_timeout=60.0), owner="",
                                                              request_id="waits"))
        running = await _start(engine, busy.session_id)
        [task] = await _tasks(conn)

        drain = asyncio.ensure_future(engine.drain(60.0))
        await _turns()
        # A waiting create ends as at a stop: nothing was placed.
        with pytest.raises(ShuttingDownError):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(RecoveringError) as refused:
            await engine.execute_activity(idle.session_id, "work", session_pb2.Payload(data=b"x"), 60.0, {})
        assert refused.value.reason == "RECOVERING"
        assert refused.value.metadata == {"session_id": idle.session_id}
        assert "nothing was done" in refused.value.message
        with pytest.raises(RecoveringError):
            await engine.create_session("q", SessionOptions(), owner="", request_id="new")
        with pytest.raises(RecoveringError):
            await engine.recreate_session(engine.to_pb(busy).recreate_token, SessionOptions(), owner="",
                                         request_id="again")
        # A call that could not start anyway still says why (not a refusal to retry for ever).
        with pytest.raises(SessionNotFoundError):
            await engine.execute_activity("no-such-session", "work", session_pb2.Payload(), 60.0, {})
        assert await _tasks(conn) == [], "a refused activity reached the worker"
        assert engine.activities_in_flight == 1

        # Heartbeats, reads and CompleteSession keep working; no session fails.
        assert engine.worker_message(conn, worker_pb2.WorkerHeartbeatRequest(heartbeat=worker_pb2.Heartbeat()))
        assert any(m.HasField("heartbeat_ack") for m in await _queued(conn))
        assert engine.complete_session(full.session_id).state is SessionState.CLOSED
        assert engine.get_session(idle.session_id).state is SessionState.OPEN
        assert not drain.done()

        _answer(engine, conn, task, b"done")
        assert (await asyncio.wait_for(running, 5)).result.data == b"done"
        assert await asyncio.wait_for(drain, 5) == (1, 0)
    finally:
        engine.stop()


@pytest.mark.parametrize("timeout", [0.0, 0.2], ids=["drain-timeout-0", "timeout-passes"])
async def test_what_the_drain_did_not_see_finish_the_stop_cuts_with_shutting_down(timeout: float) -> None:
    engine, conn = _engine()
    try:
        session = await engine.create_session("q", SessionOptions(), owner="", request_id="")
        stuck = await _start(engine, session.session_id)
        assert len(await _tasks(conn)) == 1

        assert await asyncio.wait_for(engine.drain(timeout), 5) == (1, 1)
        assert not stuck.done()  # the drain only stops waiting; the stop ends it
        engine.begin_shutdown()
        with pytest.raises(ShuttingDownError):
            await asyncio.wait_for(stuck, 5)
        assert any(m.HasField("server_restarting") for m in await _queued(conn))
        assert engine.get_session(session.session_id).state is SessionState.OPEN
    finally:
        engine.stop()


async def test_a_drain_ends_at_once_when_told_to_abort() -> None:
    engine, conn = _engine()
    try:
        session = await engine.create_session("q", SessionOptions(), owner="", request_id="")
        stuck = await _start(engine, session.session_id)
        assert len(await _tasks(conn)) == 1
        abort = asyncio.Event()
        drain = asyncio.ensure_future(engine.drain(60.0, abort=(asyncio.Event(), abort)))
        await _turns()
        assert not drain.done()
        abort.set()  # a second SIGTERM, or a replica that fenced itself: no more waiting
        assert await asyncio.wait_for(drain, 5) == (1, 1)
        engine.begin_shutdown()
        with pytest.raises(ShuttingDownError):
            await asyncio.wait_for(stuck, 5)
    finally:
        engine.stop()


async def test_an_activity_held_for_a_detached_worker_is_refused_at_once_it_was_never_sent() -> None:
    engine, conn = _engine()
    try:
        session = await engine.create_session("q", SessionOptions(reattach_timeout=60.0), owner="", request_id="")
        engine.disconnect_worker(conn)
        assert engine.get_session(session.session_id).detached_at is not None
        held = await _start(engine, session.session_id)
        assert not held.done()

        assert await asyncio.wait_for(engine.drain(60.0), 5) == (0, 0)
        with pytest.raises(RecoveringError) as refused:
            await asyncio.wait_for(held, 5)
        assert refused.value.metadata == {"session_id": session.session_id}
        assert engine.activities_in_flight == 0
        # The worker coming back during the drain gets its session, and no task.
        back = engine.connect_worker(WorkerRegistration("q", "w1", "id2", "h", ResourceVector({"sessions": 3})))
        assert engine.get_session(session.session_id).state is SessionState.OPEN
        assert await _tasks(back) == []
    finally:
        engine.stop()


async def test_a_drain_without_activities_in_flight_ends_at_once() -> None:
    engine, _ = _engine()
    try:
        assert await asyncio.wait_for(engine.drain(60.0), 5) == (0, 0)
        assert engine.draining
    finally:
        engine.stop()
