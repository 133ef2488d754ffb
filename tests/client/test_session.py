"""Session behaviour without a network: the context rule, completion on exit, the failure race."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from sessiond_client import (
    ActivityError,
    FailureCause,
    PermissionDeniedError,
    RPCError,
    SessionAlreadyOpenError,
    SessionClient,
    SessionClosedError,
    SessionCompletedError,
    SessionFailedError,
    SessionFailure,
    SessionState,
    activity,
    current_session,
)
from sessiond_client.api.v1 import session_pb2, session_service_pb2

from tests.client.fakes import FAILED, FakeStub, aio_error, fake_client

pytestmark = pytest.mark.asyncio

WORKER_LOST = session_pb2.FAILURE_CAUSE_WORKER_LOST


@pytest_asyncio.fixture
async def client_and_stub() -> AsyncIterator[tuple[SessionClient, FakeStub]]:
    client, stub = fake_client()
    yield client, stub
    await client.close()


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_creating_inside_an_open_session_raises(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    async with client.create_session("q") as outer:
        assert current_session() is outer
        with pytest.raises(SessionAlreadyOpenError) as caught:
            async with client.create_session("q"):
                pytest.fail("must not enter")
        assert caught.value.session_id == outer.id
        with pytest.raises(SessionAlreadyOpenError):
            async with client.recreate_session(outer.recreate_token):
                pytest.fail("must not enter")
    assert len(stub.created) == 1  # the refused creates never reached the server
    assert current_session() is None


async def test_a_failed_session_in_the_context_does_not_block(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    async with client.create_session("q") as outer:
        stub.fail_session(outer.id, WORKER_LOST)
        failure = await asyncio.wait_for(outer.wait_failed(), 5)
        assert failure == SessionFailure(FailureCause.WORKER_LOST, "lost")
        assert outer.failed
        async with client.create_session("q") as inner:
            assert current_session() is inner
        assert current_session() is outer
    # The outer one was already FAILED: exiting does not complete it again.
    assert stub.completed == [inner.id]


async def test_a_completed_session_in_the_context_does_not_block(
    client_and_stub: tuple[SessionClient, FakeStub],
) -> None:
    client, _ = client_and_stub
    async with client.create_session("q") as outer:
        info = await outer.complete()
        assert info.state is SessionState.CLOSED
        assert await outer.wait_failed() is None
        async with client.create_session("q"):
            pass


async def test_child_tasks_inherit_the_context(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, _ = client_and_stub

    async def create() -> None:
        async with client.create_session("q"):
            pass

    async with client.create_session("q"):
        with pytest.raises(SessionAlreadyOpenError):
            await asyncio.create_task(create())
    await asyncio.create_task(create())  # outside the block: allowed


async def test_sibling_sessions_in_separate_tasks_are_allowed(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    entered = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with client.create_session("q"):
            entered.set()
            await release.wait()

    first = asyncio.create_task(hold())
    await entered.wait()
    async with client.create_session("q"):
        release.set()
    await first
    assert len(stub.created) == 2


async def test_exit_by_exception_completes_and_stops_the_watch(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    with pytest.raises(KeyError):
        async with client.create_session("q") as session:
            raise KeyError("boom")
    assert stub.completed == [session.id]
    assert session.state is SessionState.CLOSED
    watch = stub.watches.get(session.id)
    assert watch is None or watch.cancelled
    assert not other_tasks()


async def test_cancellation_inside_the_block_still_completes(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    entered = asyncio.Event()
    ids: list[str] = []

    async def body() -> None:
        async with client.create_session("q") as session:
            ids.append(session.id)
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stub.completed == ids
    assert not other_tasks()


async def test_completion_failure_surfaces_only_when_the_block_succeeded(
    client_and_stub: tuple[SessionClient, FakeStub],
) -> None:
    client, stub = client_and_stub
    stub.complete_error = aio_error(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    with pytest.raises(ValueError):  # the body's error wins; the completion error is only logged
        async with client.create_session("q"):
            raise ValueError("body")
    with pytest.raises(PermissionDeniedError) as caught:
        async with client.create_session("q"):
            pass
    assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
    stub.complete_error = aio_error(grpc.StatusCode.UNAVAILABLE)  # transient: retried, then raised
    with pytest.raises(RPCError) as unavailable:
        async with client.create_session("q"):
            pass
    assert unavailable.value.code is grpc.StatusCode.UNAVAILABLE
    assert stub.completed[-4:] == [stub.completed[-1]] * 4
    assert not other_tasks()


async def test_a_session_unknown_at_completion_is_fine(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    stub.complete_error = aio_error(grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    async with client.create_session("q"):
        pass


async def test_in_flight_activity_raises_as_soon_as_the_watch_sees_failed(
    client_and_stub: tuple[SessionClient, FakeStub],
) -> None:
    client, stub = client_and_stub
    async with client.create_session("q") as session:
        running = asyncio.create_task(session.execute_activity("slow", 1))
        await stub.wait_executions(1)
        stub.fail_session(session.id, WORKER_LOST)
        with pytest.raises(SessionFailedError) as caught:
            await asyncio.wait_for(running, 5)
        assert caught.value.cause is FailureCause.WORKER_LOST
        assert caught.value.in_flight
        assert caught.value.session_id == session.id
        _, call = stub.executions[0]
        assert call.cancelled  # the RPC was given up, not left running
        # New activities are refused locally from now on.
        with pytest.raises(SessionFailedError) as refused:
            await session.execute_activity("next")
        assert not refused.value.in_flight
        assert len(stub.executions) == 1


async def test_in_flight_activity_sees_a_completion_from_another_task(
    client_and_stub: tuple[SessionClient, FakeStub],
) -> None:
    client, stub = client_and_stub
    async with client.create_session("q") as session:
        running = asyncio.create_task(session.execute_activity("slow"))
        await stub.wait_executions(1)
        await session.complete()
        with pytest.raises(SessionCompletedError):
            await running
        with pytest.raises(SessionClosedError):
            await session.execute_activity("next")


async def test_activity_outcomes(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    converter = client.converter
    async with client.create_session("q") as session:
        ok = asyncio.create_task(session.execute_activity("add", 1, 2, start_to_close_timeout=3))
        await stub.wait_executions(1)
        request, call = stub.executions[0]
        assert request.activity_type == "add"
        assert converter.decode_args(request.input) == [1, 2]
        assert request.start_to_close_timeout.ToTimedelta().total_seconds() == 3
        call.future.set_result(session_service_pb2.ExecuteActivityResponse(result=converter.to_payload(3)))
        assert await ok == 3

        failing = asyncio.create_task(session.execute_activity("explode"))
        await stub.wait_executions(2)
        failure = session_pb2.ActivityFailure(
            type="Boom", message="bad", non_retryable=True, details=converter.to_payload({"why": "x"})
        )
        stub.executions[1][1].future.set_result(session_service_pb2.ExecuteActivityResponse(failure=failure))
        with pytest.raises(ActivityError) as caught:
            await failing
        error = caught.value
        assert (error.type, error.message, error.non_retryable, error.details) == ("Boom", "bad", True, {"why": "x"})
        assert error.activity_type == "explode"
        assert session.state is SessionState.OPEN  # an activity failure leaves the session open


async def test_a_server_verdict_marks_the_session_failed(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    async with client.create_session("q") as session:
        running = asyncio.create_task(session.execute_activity("x"))
        await stub.wait_executions(1)
        stub.executions[0][1].future.set_exception(
            aio_error(grpc.StatusCode.ABORTED, "SESSION_FAILED", session_id=session.id, cause="HEARTBEAT_TIMEOUT")
        )
        with pytest.raises(SessionFailedError) as caught:
            await running
        assert caught.value.cause is FailureCause.HEARTBEAT_TIMEOUT
        assert session.failed
        assert session.failure is not None and session.failure.cause is FailureCause.HEARTBEAT_TIMEOUT


async def test_activity_may_be_named_by_its_function(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub

    @activity.defn(name="renamed")
    async def original() -> None: ...

    async with client.create_session("q") as session:
        task = asyncio.create_task(session.execute_activity(original))
        await stub.wait_executions(1)
        assert stub.executions[0][0].activity_type == "renamed"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stub.executions[0][1].cancelled


async def test_the_watch_treats_an_unknown_session_as_gone(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    stub.watch_error = aio_error(grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    async with client.create_session("q") as session:
        failure = await asyncio.wait_for(session.wait_failed(), 5)
        assert failure is not None and failure.cause is FailureCause.SESSION_LOST
    assert stub.completed == []  # nothing to complete


async def test_create_request(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    async with client.create_session("q", creation_timeout=0, heartbeat_timeout=2.5, owner="alice"):
        pass
    async with client.create_session("q", request_id="fixed"):
        pass
    async with client.create_session("q"):
        pass
    (first, first_timeout), (second, _), (third, third_timeout) = stub.created
    assert first.options.HasField("creation_timeout") and first.options.creation_timeout.ToTimedelta().seconds == 0
    assert first.options.heartbeat_timeout.ToTimedelta().total_seconds() == 2.5
    assert not first.options.HasField("execution_timeout")
    assert first.owner == "alice"
    assert uuid.UUID(first.request_id) and first.request_id != third.request_id
    assert second.request_id == "fixed"
    # The RPC deadline outlasts the server-side wait by the default RPC timeout (7 s here).
    assert first_timeout is not None and first_timeout == pytest.approx(7.0, abs=0.5)
    assert third_timeout is not None and third_timeout == pytest.approx(67.0, abs=0.5)


async def test_failed_session_reported_by_create_is_ended(client_and_stub: tuple[SessionClient, FakeStub]) -> None:
    client, stub = client_and_stub
    async with client.create_session("q") as session:
        stub.fail_session(session.id, WORKER_LOST)
        await session.wait_failed()
    assert session.info.state is SessionState.FAILED
    assert session.info.failure is not None
    assert FAILED == int(SessionState.FAILED)
