"""The libraries' side of SPEC §6.1, without a network: the message-size limit (the client checks
inputs, the worker checks results against the announced limit) and worker-side fencing."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from sessiond_client import MessageTooLargeError, SessionClient, SessionWorker
from sessiond_client._fencing import Fence
from sessiond_client._types import SessionInfo
from sessiond_client.api.v1 import session_pb2, worker_pb2

from tests.client.fakes import FakeStub, fake_client, session_msg
from tests.client.test_worker_protocol import next_result, server, start, task

Outbox = asyncio.Queue[worker_pb2.WorkerHeartbeatRequest | None]
MiB = 1024 * 1024


async def blob(size: int) -> bytes:
    return b"x" * size


async def huge_failure(size: int) -> None:
    raise ValueError("x" * size)


async def forever() -> None:
    await asyncio.Event().wait()


@pytest_asyncio.fixture
async def client_and_stub() -> AsyncIterator[tuple[SessionClient, FakeStub]]:
    client, stub = fake_client()
    yield client, stub
    await client.close()


@pytest_asyncio.fixture
async def wired() -> AsyncIterator[tuple[SessionWorker, Outbox]]:
    worker = SessionWorker("127.0.0.1:9", "q", [blob, huge_failure, forever])
    outbox: Outbox = asyncio.Queue()
    executor = concurrent.futures.ThreadPoolExecutor(2)
    worker._outbox = outbox
    worker._executor = executor
    worker._fence = Fence(asyncio.get_running_loop().time())
    yield worker, outbox
    await worker._unwind_activities()
    executor.shutdown(wait=True)


def registered(limit: int) -> worker_pb2.WorkerHeartbeatResponse:
    return server(registered=worker_pb2.Registered(worker_id="w", max_message_size=limit))


def info(session_id: str, heartbeat: float) -> SessionInfo:
    msg = session_msg(session_id)
    msg.options.heartbeat_timeout.FromTimedelta(timedelta(seconds=heartbeat))
    return SessionInfo._from_proto(msg)


# ----------------------------------------------------------------- the client checks inputs


@pytest.mark.asyncio
async def test_an_input_over_the_clients_limit_is_refused_before_it_is_sent(
        client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    assert client.max_message_size == 16 * MiB
    async with client.create_session("q") as session:
        with pytest.raises(MessageTooLargeError) as caught:
            await session.execute_activity("echo", b"x" * (16 * MiB))
        assert stub.executions == []
        assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.limit == 16 * MiB and caught.value.size is not None and caught.value.size > 16 * MiB
        assert caught.value.session_id == session.id


@pytest.mark.asyncio
async def test_a_smaller_client_limit_applies_and_inputs_under_it_go_out() -> None:
    client = SessionClient("127.0.0.1:9", max_message_size=1000)
    stub = FakeStub()
    client._stub = stub  # type: ignore[assignment]
    try:
        async with client.create_session("q") as session:
            with pytest.raises(MessageTooLargeError):
                await session.execute_activity("echo", b"x" * 1000)
            call = asyncio.ensure_future(session.execute_activity("echo", b"x" * 10))
            await stub.wait_executions(1)
            call.cancel()
    finally:
        await client.close()


# ----------------------------------------------------------------- the worker checks results


@pytest.mark.parametrize(("announced", "limit"), [(MiB, MiB), (0, 4 * MiB)], ids=["announced", "older-server"])
@pytest.mark.asyncio
async def test_a_result_over_the_announced_limit_becomes_a_result_too_large_failure(
        wired: tuple[SessionWorker, Outbox], announced: int, limit: int) -> None:
    worker, outbox = wired
    worker._on_message(registered(announced))
    worker._on_message(start("s-1"))

    worker._on_message(task("a-1", "s-1", "blob", limit + 1))
    result = await next_result(outbox)
    worker._on_message(task("a-2", "s-1", "blob", limit - 4096))
    fits = await next_result(outbox)

    assert result.WhichOneof("outcome") == "failure"
    assert result.failure.type == "ResultTooLarge" and result.failure.non_retryable
    assert str(limit + 1) in result.failure.message and str(limit) in result.failure.message
    assert fits.WhichOneof("outcome") == "result" and len(fits.result.data) == limit - 4096


@pytest.mark.asyncio
async def test_a_failure_over_the_limit_is_reported_as_result_too_large(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._on_message(registered(MiB))
    worker._on_message(start("s-1"))
    worker._on_message(task("a-1", "s-1", "huge_failure", MiB))
    result = await next_result(outbox)
    assert result.failure.type == "ResultTooLarge"
    assert result.ByteSize() < 1000


@pytest.mark.asyncio
async def test_the_worker_channel_leaves_size_checks_to_the_library() -> None:
    worker = SessionWorker("127.0.0.1:9", "q", [blob])
    assert worker._connection.max_message_size is None  # grpc unlimited: the announced limit is checked


# ----------------------------------------------------------------- fencing (pure)


def test_a_session_is_fenced_exactly_at_its_heartbeat_timeout_of_silence() -> None:
    fence = Fence(10.0)
    sessions = {"quick": info("quick", 2.0), "slow": info("slow", 20.0)}
    assert fence.next_due(sessions) == 12.0
    assert fence.due(11.999, sessions) == []
    assert fence.due(12.0, sessions) == ["quick"]
    assert fence.is_fenced("quick") and not fence.is_fenced("slow")
    assert fence.next_due(sessions) == 30.0
    assert fence.due(30.0, sessions) == ["slow"]
    assert fence.due(31.0, sessions) == []  # each session is fenced once


def test_any_word_from_the_server_confirms_every_session() -> None:
    fence = Fence(0.0)
    sessions = {"s": info("s", 1.0)}
    fence.due(5.0, sessions)
    assert fence.heard(5.5) == {"s"}
    assert not fence.is_fenced("s") and fence.next_due(sessions) == 6.5
    fence.due(7.0, sessions)
    fence.forget("s")
    assert not fence.is_fenced("s")


def test_a_session_without_a_timeout_in_its_options_uses_the_default() -> None:
    fence = Fence(0.0)
    bare = SessionInfo._from_proto(session_msg("s"))
    assert bare.options.heartbeat_timeout is None
    assert fence.next_due({"s": bare}) == 20.0


# ----------------------------------------------------------------- fencing (the worker)


@pytest.mark.asyncio
async def test_a_silent_server_fences_the_session_its_activities_stop_and_are_reported(
        wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._on_message(start("s-1"))
    worker._sessions["s-1"] = info("s-1", 0.2)
    worker._on_message(task("a-1", "s-1", "forever"))
    running = worker._running["a-1"]

    fencer = asyncio.create_task(worker._fence_loop())
    try:
        result = await next_result(outbox)
    finally:
        fencer.cancel()
        await asyncio.gather(fencer, return_exceptions=True)

    assert (result.activity_id, result.failure.type) == ("a-1", "ServerUnreachable")
    assert running.context.cancelled and running.context.cancel_reason == "SERVER_UNREACHABLE"
    assert worker._fence.is_fenced("s-1")
    # Until the server confirms the session, its tasks are refused...
    worker._start_activity(task("a-2", "s-1", "blob", 1).activity_task)
    refused = await next_result(outbox)
    assert refused.failure.type == "SessionFenced"
    # ... and any message from it does.
    worker._on_message(server(heartbeat_ack=worker_pb2.HeartbeatAck()))
    worker._on_message(task("a-3", "s-1", "blob", 3))
    assert (await next_result(outbox)).result.data == b"xxx"


@pytest.mark.asyncio
async def test_the_worker_asks_for_an_answer_when_it_only_sends_results(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    interval = server()
    interval.heartbeat_interval.CopyFrom(duration_pb2.Duration(nanos=100_000_000))
    worker._on_message(interval)
    beats = asyncio.create_task(worker._heartbeat_loop())
    try:
        loop = asyncio.get_running_loop()
        pings = 0
        until = loop.time() + 0.6
        while loop.time() < until:
            # A steady flow of results: never silent, but the server says nothing back.
            worker._send(worker_pb2.WorkerHeartbeatRequest(activity_result=worker_pb2.ActivityResult()))
            await asyncio.sleep(0.02)
            while not outbox.empty():
                message: Any = outbox.get_nowait()
                pings += message.WhichOneof("message") == "heartbeat"
        assert 3 <= pings <= 8
    finally:
        beats.cancel()
        await asyncio.gather(beats, return_exceptions=True)


@pytest.mark.asyncio
async def test_heartbeat_details_over_half_the_limit_are_sent_without_them(wired: tuple[SessionWorker, Outbox]) -> None:
    worker, outbox = wired
    worker._on_message(registered(MiB))
    worker._send_heartbeat("a-1", "s-1", session_pb2.Payload(data=b"x" * (MiB // 2 + 1)))
    worker._send_heartbeat("a-1", "s-1", session_pb2.Payload(data=b"small"))
    big, small = outbox.get_nowait(), outbox.get_nowait()
    assert big is not None and small is not None
    assert not big.activity_heartbeat.HasField("details")
    assert small.activity_heartbeat.details.data == b"small"
