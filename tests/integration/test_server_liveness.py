"""Worker liveness: lost, silent and timed-out sessions fail with the right cause, and stay failed.

The kill and freeze tests run the worker as a separate OS process, so SIGKILL and SIGSTOP act on
a real peer: the kernel closes a killed process's socket; a stopped one keeps it open and silent.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import grpc
import pytest
from sessiond_client.api.v1 import session_pb2, session_service_pb2

from tests.integration.conftest import (
    FAILED,
    OPEN,
    QUEUE,
    ProcessFactory,
    Sessiond,
    WorkerFactory,
    eventually,
    options,
)

WORKER_LOST = session_pb2.FAILURE_CAUSE_WORKER_LOST
HEARTBEAT_TIMEOUT = session_pb2.FAILURE_CAUSE_HEARTBEAT_TIMEOUT
FROZEN_HEARTBEAT = 5.0  # seconds: the frozen-process test's heartbeat_timeout


async def _watch(sessiond: Sessiond, session_id: str) -> Any:
    """A WatchSession call whose first message (the current state) has been read and checked OPEN."""
    call = sessiond.stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=session_id))
    first = await asyncio.wait_for(call.read(), 10)
    assert first.session.state == OPEN
    return call


async def _next_state(call: Any, timeout: float = 10) -> session_pb2.Session:
    reply = await asyncio.wait_for(call.read(), timeout)
    assert reply is not grpc.aio.EOF, "the watch ended without a terminal state"
    return reply.session  # type: ignore[no-any-return]


@pytest.mark.asyncio
async def test_a_sigkilled_worker_process_fails_its_sessions_with_worker_lost_seen_by_watch(
        sessiond: Sessiond, spawn_worker: ProcessFactory) -> None:
    process = await spawn_worker("doomed", capacity=2)
    sessions = [await sessiond.create(QUEUE) for _ in range(2)]
    for session in sessions:
        await process.wait_for("session_started", session_id=session.session_id)
    watches = [await _watch(sessiond, s.session_id) for s in sessions]

    process.signal(signal.SIGKILL)

    for session, watch in zip(sessions, watches, strict=True):
        ended = await _next_state(watch)
        assert ended.session_id == session.session_id
        assert ended.state == FAILED and ended.failure.cause == WORKER_LOST and ended.HasField("close_time")
        # A terminal state is the last message of the watch.
        assert await asyncio.wait_for(watch.read(), 10) is grpc.aio.EOF
        assert (await sessiond.get(session.session_id)).failure.cause == WORKER_LOST
    assert "doomed" not in await sessiond.workers()


@pytest.mark.asyncio
async def test_a_frozen_worker_process_fails_with_heartbeat_timeout_and_its_late_heartbeat_revives_nothing(
        sessiond: Sessiond, spawn_worker: ProcessFactory) -> None:
    process = await spawn_worker("sleepy", capacity=2)
    # The worker is a separate process on a shared, loaded machine: a heartbeat_timeout of 1 s could
    # expire while the box merely starves it, before the SIGSTOP. 5 s is a silence load does not
    # cause; the SIGSTOP's silence has no end, so the timer is still what ends the session.
    session = await sessiond.create(QUEUE, options=options(heartbeat=FROZEN_HEARTBEAT))
    await process.wait_for("session_started", session_id=session.session_id)
    # The server asked for a third of the session's heartbeat_timeout.
    await eventually(lambda: any(e["event"] == "interval" and e["seconds"] <= FROZEN_HEARTBEAT / 3 + 0.01
                                 for e in process.events))
    watch = await _watch(sessiond, session.session_id)

    assert (await sessiond.get(session.session_id)).state == OPEN, "the session failed before the SIGSTOP"
    stopped_at = time.time()
    process.signal(signal.SIGSTOP)
    failed = await _next_state(watch, timeout=FROZEN_HEARTBEAT + 10)
    assert failed.state == FAILED and failed.failure.cause == HEARTBEAT_TIMEOUT
    # Ended by the silence the SIGSTOP made, not by one before it (same machine, same wall clock).
    assert failed.close_time.ToNanoseconds() > stopped_at * 1e9
    beats_before = sum(e["event"] == "heartbeat" for e in process.events)

    process.signal(signal.SIGCONT)

    # Told in-band that the session is gone, the worker drops it, and heartbeats again.
    await process.wait_for("session_ended", session_id=session.session_id, state="SESSION_STATE_FAILED",
                           cause="FAILURE_CAUSE_HEARTBEAT_TIMEOUT")
    await eventually(lambda: sum(e["event"] == "heartbeat" for e in process.events) > beats_before)
    worker = await eventually(lambda: _heard_after(sessiond, "sleepy", failed.close_time))
    assert worker.open_sessions == 0
    after = await sessiond.get(session.session_id)
    assert after.state == FAILED and after.failure.cause == HEARTBEAT_TIMEOUT
    assert after.close_time == failed.close_time
    # The worker itself is alive again: it takes new sessions (new ids), the old one stays dead.
    fresh = await sessiond.create(QUEUE, options=options(creation=5))
    assert fresh.worker.worker_id == "sleepy" and fresh.session_id != session.session_id
    assert (await sessiond.get(session.session_id)).state == FAILED


async def _heard_after(sessiond: Sessiond, worker_id: str, when: Any) -> session_pb2.WorkerInfo | None:
    worker = (await sessiond.workers()).get(worker_id)
    if worker is None or worker.last_heartbeat_time.ToNanoseconds() <= when.ToNanoseconds():
        return None
    return worker


@pytest.mark.asyncio
async def test_an_in_process_worker_that_stops_heartbeating_fails_with_heartbeat_timeout(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("quiet", capacity=2)
    session = await sessiond.create(QUEUE, options=options(heartbeat=1.0))
    steady = await sessiond.create(QUEUE)  # default 20 s: must survive the silence below
    watch = await _watch(sessiond, session.session_id)

    worker.pause()
    failed = await _next_state(watch)
    assert failed.failure.cause == HEARTBEAT_TIMEOUT
    await eventually(lambda: worker.ended.get(session.session_id, {}).get("cause") == "FAILURE_CAUSE_HEARTBEAT_TIMEOUT")

    worker.resume()
    await eventually(lambda: _heard_after(sessiond, "quiet", failed.close_time))
    assert (await sessiond.get(session.session_id)).state == FAILED
    assert (await sessiond.get(steady.session_id)).state == OPEN


@pytest.mark.asyncio
async def test_execution_timeout_fails_the_session(sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE, options=options(execution=0.4))
    assert session.expire_time.ToNanoseconds() - session.create_time.ToNanoseconds() == pytest.approx(0.4e9, abs=1e6)
    watch = await _watch(sessiond, session.session_id)

    failed = await _next_state(watch)

    assert failed.state == FAILED and failed.failure.cause == session_pb2.FAILURE_CAUSE_EXECUTION_TIMEOUT
    await eventually(lambda: worker.ended.get(session.session_id, {}).get("cause") == "FAILURE_CAUSE_EXECUTION_TIMEOUT")
    assert (await sessiond.workers())["w1"].open_sessions == 0


@pytest.mark.asyncio
async def test_a_stream_that_ends_without_goodbye_fails_its_sessions_with_worker_lost(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE)

    worker.close()

    failed = await eventually(lambda: _state(sessiond, session.session_id, FAILED))
    assert failed.failure.cause == WORKER_LOST
    await eventually(lambda: worker.stream_done.is_set())


@pytest.mark.asyncio
async def test_goodbye_then_stream_end_fails_open_sessions_with_worker_shutdown(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1")
    session = await sessiond.create(QUEUE)

    await worker.goodbye(drain=False)

    failed = await eventually(lambda: _state(sessiond, session.session_id, FAILED))
    assert failed.failure.cause == session_pb2.FAILURE_CAUSE_WORKER_SHUTDOWN
    await eventually(lambda: worker.ended.get(session.session_id, {}).get("cause") == "FAILURE_CAUSE_WORKER_SHUTDOWN")
    worker.close()
    await eventually(lambda: worker.stream_done.is_set())
    assert "w1" not in await sessiond.workers()


@pytest.mark.asyncio
async def test_the_heartbeat_interval_is_a_third_of_the_smallest_heartbeat_timeout(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1", capacity=3)
    assert worker.interval == 10.0  # no sessions: the server's maximum

    await sessiond.create(QUEUE)  # default heartbeat_timeout 20 s
    await eventually(lambda: worker.interval == pytest.approx(20 / 3, abs=1e-6))
    short = await sessiond.create(QUEUE, options=options(heartbeat=3))
    await eventually(lambda: worker.interval == pytest.approx(1.0, abs=1e-6))

    await sessiond.complete(short.session_id)
    await eventually(lambda: worker.interval == pytest.approx(20 / 3, abs=1e-6))


async def _state(sessiond: Sessiond, session_id: str, state: int) -> session_pb2.Session | None:
    session = await sessiond.get(session_id)
    return session if session.state == state else None


@pytest.mark.asyncio
async def test_an_idle_worker_is_not_judged_by_a_shorter_interval_before_it_was_told(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("idle", capacity=2)
    worker.pause()  # compliant: its interval is 10 s, and it last spoke when it registered
    await asyncio.sleep(1.1)  # time must pass (not a synchronisation): idle longer than the timeout below

    first = await sessiond.create(QUEUE, options=options(heartbeat=1.0, creation=0))
    # The worker has only just been told to beat every 0.33 s: it is not stale yet, and has room.
    second = await sessiond.create(QUEUE, options=options(creation=0))

    assert (first.worker.worker_id, second.worker.worker_id) == ("idle", "idle")
