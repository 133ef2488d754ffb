"""Every bound of SPEC §6.1 on a real in-process server: message size, per-worker backlog, waiting
creates, and watches that leave nothing behind.

The white-box assertions (no engine state left, no connection object alive) read the in-process
engine; the process-level ones (RSS under load, SIGSTOP, partitions) are in
``test_resource_bounds.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import grpc
import pytest
from sessiond_client.api.v1 import session_pb2, session_service_pb2, worker_pb2

from sessiond.server.worker_connection import WorkerConnection
from tests.integration.conftest import (
    OPEN,
    QUEUE,
    ServerFactory,
    Sessiond,
    WorkerFactory,
    error_info,
    eventually,
    options,
    rpc_error,
)
from tests.integration.rawworker import RawWorker

MiB = 1024 * 1024
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _blob_request(session_id: str, size: int, *, start_to_close: float | None = None,
                  activity_type: str = "echo") -> session_service_pb2.ExecuteActivityRequest:
    request = session_service_pb2.ExecuteActivityRequest(
        session_id=session_id, activity_type=activity_type,
        input=session_pb2.Payload(metadata={"encoding": b"binary/plain"}, data=b"x" * size))
    if start_to_close is not None:
        request.start_to_close_timeout.FromNanoseconds(int(start_to_close * 1e9))
    return request


def _blob_result(sessiond: Sessiond, session_id: str, size: int) -> session_service_pb2.ExecuteActivityRequest:
    """Ask the raw worker's ``blob`` activity for a result of ``size`` bytes."""
    return session_service_pb2.ExecuteActivityRequest(
        session_id=session_id, activity_type="blob",
        input=session_pb2.Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(size).encode()))


def _connections() -> list[WorkerConnection]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, WorkerConnection)]


# ----------------------------------------------------------------- one message-size limit


@pytest.mark.asyncio
async def test_an_input_over_the_default_limit_is_message_too_large_with_error_info(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    worker = await make_worker("w1", capacity=2)
    session = await sessiond.create(QUEUE)

    _, info = await rpc_error(sessiond.stub.ExecuteActivity(_blob_request(session.session_id, 17 * MiB)),
                              RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")

    assert info.metadata["limit"] == str(16 * MiB) and info.metadata["session_id"] == session.session_id
    assert worker.ran == []  # never sent
    reply = await sessiond.execute(session.session_id, "echo", "still fine")
    assert json.loads(reply.result.data) == "still fine"


@pytest.mark.asyncio
async def test_the_configured_limit_is_announced_in_registered_and_applies_to_inputs(
        make_server: ServerFactory) -> None:
    sessiond = await make_server(max_message_size=MiB)
    async with RawWorker(sessiond.target, QUEUE, worker_id="w1") as worker:
        assert worker.max_message_size == MiB
        session = await sessiond.create(QUEUE)

        await rpc_error(sessiond.stub.ExecuteActivity(_blob_request(session.session_id, MiB + 1)),
                        RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
        fits = await sessiond.stub.ExecuteActivity(_blob_request(session.session_id, MiB - 4096))
        assert len(fits.result.data) == MiB - 4096


@pytest.mark.asyncio
async def test_an_oversized_result_from_a_raw_worker_fails_that_activity_alone(
        make_server: ServerFactory) -> None:
    sessiond = await make_server(max_message_size=MiB)
    async with RawWorker(sessiond.target, QUEUE, worker_id="w1", capacity=2) as worker:
        victim = await sessiond.create(QUEUE)
        bystander = await sessiond.create(QUEUE)

        reply = await sessiond.stub.ExecuteActivity(_blob_result(sessiond, victim.session_id, MiB + MiB // 2))

        assert reply.WhichOneof("outcome") == "failure"
        assert reply.failure.type == "ResultTooLarge" and reply.failure.non_retryable
        assert not worker.stream_done.is_set()
        for session in (victim, bystander):
            assert (await sessiond.get(session.session_id)).state == OPEN
        again = await sessiond.execute(victim.session_id, "echo", "same stream")
        assert json.loads(again.result.data) == "same stream"
        assert [e["event"] for e in worker.events].count("registered") == 1


@pytest.mark.asyncio
async def test_a_result_past_the_transport_cap_ends_only_that_stream_and_the_server_carries_on(
        make_server: ServerFactory) -> None:
    sessiond = await make_server(max_message_size=MiB)
    async with RawWorker(sessiond.target, QUEUE, worker_id="rogue") as rogue, \
            RawWorker(sessiond.target, QUEUE, worker_id="good") as good:
        first = await sessiond.create(QUEUE)
        second = await sessiond.create(QUEUE)
        on_rogue = first if first.worker.worker_id == "rogue" else second
        on_good = second if on_rogue is first else first

        # Past twice the limit grpc itself refuses the message and ends the stream: only a worker
        # that ignores the announced limit can get there.
        await rpc_error(sessiond.stub.ExecuteActivity(_blob_result(sessiond, on_rogue.session_id, 3 * MiB)),
                        grpc.StatusCode.ABORTED, "SESSION_FAILED")

        await eventually(lambda: rogue.stream_done.is_set())
        assert rogue.stream_error == RESOURCE_EXHAUSTED
        assert (await sessiond.get(on_good.session_id)).state == OPEN
        reply = await sessiond.execute(on_good.session_id, "echo", 1)
        assert json.loads(reply.result.data) == 1 and not good.stream_done.is_set()


# ----------------------------------------------------------------- per-worker outbound backlog


@pytest.mark.asyncio
async def test_a_worker_that_does_not_read_gets_worker_backlogged_past_its_byte_bound(
        make_server: ServerFactory) -> None:
    sessiond = await make_server(max_worker_backlog=4 * MiB)
    async with RawWorker(sessiond.target, QUEUE, worker_id="deaf", read=False, heartbeat_every=0.2):
        session = await sessiond.create(QUEUE)
        calls = [sessiond.stub.ExecuteActivity(_blob_request(session.session_id, MiB, start_to_close=30))
                 for _ in range(12)]

        # Each call is either refused or taken (in flight at the server, waiting for a worker that
        # never reads). Wait until all 12 are one or the other — not a time window: on a loaded box
        # 12 MiB can take longer than any fixed wait to reach the server.
        def settled() -> tuple[list[Any], int] | None:
            refused = [call for call in calls if call.done()]
            accepted = len(sessiond.server.engine.table.get(session.session_id).activities)
            return (refused, accepted) if len(refused) + accepted == len(calls) else None

        refused, accepted = await eventually(settled, timeout=30, message="every call refused or taken")
        # The 12 calls run concurrently: which of them the server takes last is not their order here.
        assert refused, "no activity was refused"
        for call in refused:
            await rpc_error(call, RESOURCE_EXHAUSTED, "WORKER_BACKLOGGED")
        # At most the bound is queued, plus what grpc already holds for the stream.
        assert 1 <= accepted <= 8, accepted
        assert (await sessiond.get(session.session_id)).state == OPEN
        for call in calls:
            call.cancel()


@pytest.mark.asyncio
async def test_a_backlogged_worker_gets_no_new_sessions_until_it_reads_again(make_server: ServerFactory) -> None:
    sessiond = await make_server(max_worker_backlog=4 * MiB)
    async with RawWorker(sessiond.target, QUEUE, worker_id="slow", capacity=8, heartbeat_every=0.2) as worker:
        session = await sessiond.create(QUEUE)
        worker.stop_reading()
        calls: list[Any] = []

        async def refused_and_settled() -> bool:
            # Fill until a task is refused while more than 3 MiB stay queued: grpc has then taken all
            # its flow-control window holds, so the queue no longer shrinks by itself.
            call = sessiond.stub.ExecuteActivity(_blob_request(session.session_id, MiB, start_to_close=60))
            calls.append(call)
            try:
                await asyncio.wait_for(asyncio.shield(call), 0.3)
            except TimeoutError:
                return False  # accepted: queued
            except grpc.aio.AioRpcError as error:
                info = error_info(error)
                assert info is not None and info.reason == "WORKER_BACKLOGGED"
            return (await sessiond.workers())["slow"].outbound_backlog_bytes > 3 * MiB

        await eventually(refused_and_settled, timeout=30)

        # Free slots, but a worker that does not read takes no new session (nothing more piles up).
        await rpc_error(sessiond.create(QUEUE, options=options(creation=0)), RESOURCE_EXHAUSTED, "NO_CAPACITY")
        waiting = asyncio.ensure_future(sessiond.create(QUEUE, options=options(creation=30)))

        worker.start_reading()
        placed = await asyncio.wait_for(waiting, 30)
        assert placed.worker.worker_id == "slow" and placed.state == OPEN
        for call in calls:
            call.cancel()


@pytest.mark.asyncio
async def test_an_activity_that_timed_out_while_queued_is_never_sent(make_server: ServerFactory) -> None:
    sessiond = await make_server()
    async with RawWorker(sessiond.target, QUEUE, worker_id="slow", heartbeat_every=0.2) as worker:
        session = await sessiond.create(QUEUE)
        worker.stop_reading()
        expired = [sessiond.stub.ExecuteActivity(_blob_request(session.session_id, MiB, start_to_close=0.5))
                   for _ in range(20)]
        for call in expired:
            await rpc_error(call, grpc.StatusCode.DEADLINE_EXCEEDED, "ACTIVITY_TIMEOUT")

        worker.start_reading()
        # The stream is ordered: once this one has run, everything queued before it has arrived.
        reply = await sessiond.execute(session.session_id, "echo", "marker")
        assert json.loads(reply.result.data) == "marker"

        stale = [r for r in worker.ran if r["activity_type"] == "echo"][:-1]
        # Only what grpc had already taken for the stream (its flow-control window, about 4 MiB
        # here) can still arrive, and it arrives cancelled; the rest never left the queue.
        assert len(stale) <= 8, f"{len(stale)} of 20 timed-out tasks were delivered late"
        for record in stale:
            assert record["activity_id"] in worker.cancelled


@pytest.mark.asyncio
async def test_a_cancelled_caller_takes_its_queued_task_out_of_the_backlog(make_server: ServerFactory) -> None:
    sessiond = await make_server(max_worker_backlog=2 * MiB)
    async with RawWorker(sessiond.target, QUEUE, worker_id="deaf", read=False, heartbeat_every=0.2):
        session = await sessiond.create(QUEUE)
        # Fill the backlog, then give up on everything: the bytes must come back at once.
        for _ in range(3):
            calls = [sessiond.stub.ExecuteActivity(_blob_request(session.session_id, MiB, start_to_close=60))
                     for _ in range(6)]
            # Six 1 MiB tasks on a 2 MiB backlog: wait for the first refusal (a deadline, not a
            # window: a loaded machine may take more than a second to move 6 MiB).
            done, pending = await asyncio.wait([asyncio.ensure_future(c) for c in calls], timeout=30,
                                               return_when=asyncio.FIRST_EXCEPTION)
            assert any(isinstance(t.exception(), grpc.aio.AioRpcError) for t in done), "nothing refused"
            for call in calls:
                call.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Still accepted after three rounds: cancelled tasks did not stay queued.
        probe = sessiond.stub.ExecuteActivity(_blob_request(session.session_id, 1000, start_to_close=60))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(probe), 0.5)
        probe.cancel()


@pytest.mark.asyncio
async def test_nothing_of_a_worker_stream_is_retained_after_it_ends(make_server: ServerFactory) -> None:
    sessiond = await make_server()
    worker = await RawWorker(sessiond.target, QUEUE, worker_id="deaf", read=False, heartbeat_every=0.2).start()
    session = await sessiond.create(QUEUE)
    calls = [sessiond.stub.ExecuteActivity(_blob_request(session.session_id, MiB)) for _ in range(8)]
    await eventually(lambda: len(sessiond.server.engine.table.get(session.session_id).activities) == 8)

    await worker.stop()  # the stream ends without a goodbye

    for call in calls:
        await rpc_error(call, grpc.StatusCode.ABORTED, "SESSION_FAILED")
    del calls
    assert await eventually(lambda: not _connections(), message="a WorkerConnection outlived its stream")


# ----------------------------------------------------------------- watches


@pytest.mark.asyncio
async def test_twenty_thousand_cancelled_watches_leave_no_engine_state(
        sessiond: Sessiond, make_worker: WorkerFactory) -> None:
    await make_worker("w1")
    session = await sessiond.create(QUEUE)
    request = session_service_pb2.WatchSessionRequest(session_id=session.session_id)
    engine = sessiond.server.engine

    for _ in range(20):
        calls = [sessiond.stub.WatchSession(request) for _ in range(1000)]
        for call in calls:
            assert (await call.read()).session.state == OPEN
        for call in calls:
            call.cancel()

    await eventually(lambda: not engine.watches, timeout=20, message="watch state left in the engine")
    # And a watch still works: it sees the end of the session.
    watch = sessiond.stub.WatchSession(request)
    assert (await watch.read()).session.state == OPEN
    await sessiond.complete(session.session_id)
    assert (await watch.read()).session.state == session_pb2.SESSION_STATE_CLOSED


# ----------------------------------------------------------------- waiting creates


@pytest.mark.asyncio
async def test_waiting_creates_are_capped_globally_and_per_queue(make_server: ServerFactory) -> None:
    sessiond = await make_server(max_waiters=3, max_waiters_per_queue=2)
    waiting = [asyncio.ensure_future(sessiond.create("a", options=options(creation=30))) for _ in range(2)]
    await eventually(lambda: sessiond.waiting == 2)

    _, info = await rpc_error(sessiond.create("a", options=options(creation=30)), RESOURCE_EXHAUSTED,
                              "TOO_MANY_WAITERS")
    assert info.metadata["task_queue"] == "a" and info.metadata["limit"] == "2"
    waiting.append(asyncio.ensure_future(sessiond.create("b", options=options(creation=30))))
    await eventually(lambda: sessiond.waiting == 3)
    _, info = await rpc_error(sessiond.create("c", options=options(creation=30)), RESOURCE_EXHAUSTED,
                              "TOO_MANY_WAITERS")
    assert info.metadata["limit"] == "3"

    # A waiter that gives up frees its place at once.
    waiting[0].cancel()
    await eventually(lambda: sessiond.waiting == 2)
    waiting.append(asyncio.ensure_future(sessiond.create("c", options=options(creation=30))))
    await eventually(lambda: sessiond.waiting == 3)
    # Creation that needs no wait is never refused for the cap.
    async with RawWorker(sessiond.target, "d", worker_id="free"):
        assert (await sessiond.create("d", options=options(creation=0))).state == OPEN
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


# ----------------------------------------------------------------- activity heartbeat details


@pytest.mark.asyncio
async def test_heartbeat_details_over_half_the_limit_are_not_kept_and_the_stream_carries_on(
        make_server: ServerFactory) -> None:
    sessiond = await make_server(max_message_size=MiB)
    async with RawWorker(sessiond.target, QUEUE, worker_id="w1") as worker:
        session = await sessiond.create(QUEUE)
        request = session_service_pb2.ExecuteActivityRequest(
            session_id=session.session_id, activity_type="sleep",
            input=session_pb2.Payload(metadata={"encoding": b"json/plain"}, data=b"30"))
        request.heartbeat_timeout.FromMilliseconds(500)
        call = asyncio.ensure_future(sessiond.stub.ExecuteActivity(request, timeout=30))
        [running] = await eventually(lambda: worker.ran)

        # The response would carry these next to the result: over half the limit, they are dropped.
        big = session_pb2.Payload(metadata={"encoding": b"binary/plain"}, data=b"x" * (MiB // 2 + 1))
        worker._send(worker_pb2.WorkerHeartbeatRequest(activity_heartbeat=worker_pb2.ActivityHeartbeat(
            activity_id=running["activity_id"], session_id=session.session_id, details=big)))
        response = await call

        assert response.WhichOneof("outcome") == "heartbeat_timeout"
        assert not response.HasField("heartbeat_details")
        assert not worker.stream_done.is_set()


@pytest.mark.asyncio
async def test_a_retrys_heartbeat_details_count_toward_the_task_size(make_server: ServerFactory) -> None:
    sessiond = await make_server(max_message_size=MiB)
    async with RawWorker(sessiond.target, QUEUE, worker_id="w1") as worker:
        session = await sessiond.create(QUEUE)
        request = _blob_request(session.session_id, MiB // 2)
        request.heartbeat_details.CopyFrom(session_pb2.Payload(data=b"x" * (MiB // 2 + 1)))

        await rpc_error(sessiond.stub.ExecuteActivity(request), RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
        assert worker.ran == []
