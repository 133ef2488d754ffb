"""The typed client against a real server and real SessionWorker processes: sessions and activities."""

from __future__ import annotations

import asyncio
import contextvars
from datetime import timedelta

import pytest
from sessiond_client import (
    ActivityError,
    ActivityTimeoutError,
    CreationTimeoutError,
    ExistingOpenSessionError,
    InvalidArgumentError,
    InvalidRecreateTokenError,
    NoCapacityError,
    Session,
    SessionAlreadyOpenError,
    SessionClient,
    SessionClosedError,
    SessionContext,
    SessionNotFoundError,
    SessionState,
)

from tests.integration.conftest import StartWorker
from tests.integration.workers.support import workers_of

pytestmark = pytest.mark.asyncio

QUEUE = "client-q"
async def enter_elsewhere(session_context: SessionContext) -> None:
    """Enter a session context manager in a task with an empty context (as another caller would)."""

    async def enter() -> None:
        async with session_context:
            pytest.fail("a session was placed")

    await asyncio.get_running_loop().create_task(enter(), context=contextvars.Context())


async def test_activities_return_results_and_failures_leave_the_session_open(
    client: SessionClient, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    async with client.create_session(QUEUE, creation_timeout=10) as session:
        assert session.state is SessionState.OPEN
        assert session.info.worker.worker_id == worker.worker_id
        assert await session.execute_activity("echo", {"nested": [1, "two"]}) == {"nested": [1, "two"]}
        assert await session.execute_activity("echo", 1, 2, 3) == [1, 2, 3]
        assert await session.execute_activity("reverse_bytes", b"\x00abc") == b"cba\x00"

        with pytest.raises(ActivityError) as failed:
            await session.execute_activity("fail", "on purpose")
        error = failed.value
        assert (error.type, error.message, error.non_retryable) == ("Boom", "on purpose", True)
        assert error.details == {"hint": "details"}
        with pytest.raises(ActivityError) as crashed:
            await session.execute_activity("crash")
        assert (crashed.value.type, crashed.value.non_retryable) == ("ValueError", False)

        # Failures changed nothing: the session is open and the next activity runs on the same worker.
        assert (await client.get_session_info(session.id)).state is SessionState.OPEN
        seen = await session.execute_activity("whoami", start_to_close_timeout=timedelta(seconds=30))
        assert seen["pid"] == worker.pid
        assert seen["session_id"] == session.id
        assert seen["worker_id"] == worker.worker_id
        assert seen["session_state"] == "OPEN"
        assert seen["timeout"] == 30
    assert (await client.get_session_info(session.id)).state is SessionState.CLOSED
    with pytest.raises(SessionClosedError):
        await session.execute_activity("echo", 1)


async def test_an_activity_past_its_timeout_fails_and_the_session_stays_open(
    client: SessionClient, start_worker: StartWorker
) -> None:
    await start_worker()
    async with client.create_session(QUEUE, creation_timeout=10) as session:
        with pytest.raises(ActivityTimeoutError) as caught:
            await session.execute_activity("sleep", 30, start_to_close_timeout=0.3)
        assert caught.value.session_id == session.id
        assert await session.execute_activity("echo", "still open") == "still open"


async def test_creating_inside_an_open_session_raises(client: SessionClient, start_worker: StartWorker) -> None:
    await start_worker()
    async with client.create_session(QUEUE, creation_timeout=10) as outer:
        with pytest.raises(SessionAlreadyOpenError) as caught:
            async with client.create_session(QUEUE, creation_timeout=10):
                pytest.fail("entered a nested session")
        assert caught.value.session_id == outer.id
    assert [s.session_id async for s in client.list_sessions(task_queue=QUEUE)] == [outer.id]


async def test_leaving_by_an_exception_completes_the_session_and_frees_the_slot(
    client: SessionClient, start_worker: StartWorker
) -> None:
    worker = await start_worker(max_sessions=1)
    with pytest.raises(RuntimeError, match="caller bug"):
        async with client.create_session(QUEUE, creation_timeout=10) as first:
            await session_echo(first)
            raise RuntimeError("caller bug")
    info = await client.get_session_info(first.id)
    assert info.state is SessionState.CLOSED
    assert info.close_time is not None
    # With max_concurrent_sessions=1, a session that does not wait proves the slot is free.
    async with client.create_session(QUEUE, creation_timeout=0) as second:
        assert second.info.worker.worker_id == worker.worker_id


async def session_echo(session: Session) -> None:
    assert await session.execute_activity("echo", "hi") == "hi"


async def test_a_worker_at_its_limit_gets_no_more_sessions(client: SessionClient, start_worker: StartWorker) -> None:
    worker = await start_worker(max_sessions=1)
    async with client.create_session(QUEUE, creation_timeout=10) as held:
        # Other callers (fresh contexts: this one holds an open session) find no room.
        with pytest.raises(NoCapacityError):
            await enter_elsewhere(client.create_session(QUEUE, creation_timeout=0))
        with pytest.raises(CreationTimeoutError):
            await enter_elsewhere(client.create_session(QUEUE, creation_timeout=0.3))
        workers = await workers_of(client, QUEUE)
        assert workers[worker.worker_id].open_sessions == 1
        assert workers[worker.worker_id].max_concurrent_sessions == 1
        assert [s.session_id async for s in client.list_sessions(state=SessionState.OPEN)] == [held.id]


async def test_recreate_places_a_new_session_on_the_same_worker(
    client: SessionClient, start_worker: StartWorker
) -> None:
    first_worker = await start_worker()
    await start_worker()
    async with client.create_session(QUEUE, creation_timeout=10) as first:
        token = first.recreate_token
        origin = first.info.worker.worker_id
    for _ in range(3):  # placement would spread them; the token pins them
        async with client.recreate_session(token, creation_timeout=10) as again:
            assert again.id != first.id
            assert again.info.worker.worker_id == origin
            assert (await again.execute_activity("whoami"))["worker_id"] == origin
    assert origin in {first_worker.worker_id, *(await workers_of(client, QUEUE))}
    with pytest.raises(InvalidRecreateTokenError):
        async with client.recreate_session(b"not a token", creation_timeout=1):
            pytest.fail("entered")


async def test_reads_lists_and_server_verdicts(client: SessionClient, start_worker: StartWorker) -> None:
    await start_worker()
    with pytest.raises(SessionNotFoundError) as missing:
        await client.get_session_info("00000000-0000-4000-8000-000000000000")
    assert missing.value.code is not None and missing.value.code.name == "NOT_FOUND"
    with pytest.raises(InvalidArgumentError) as invalid:
        async with client.create_session(QUEUE, creation_timeout=-1):
            pytest.fail("entered")
    assert invalid.value.field is not None and "creation_timeout" in invalid.value.field

    async with client.create_session(QUEUE, creation_timeout=10, owner="alice") as owned:
        pass
    info = await client.get_session_info(owned.id)
    assert (info.owner, info.state) == ("alice", SessionState.CLOSED)
    assert client.server_incarnation
    assert [s.session_id async for s in client.list_sessions(owner="alice", state=SessionState.CLOSED)] == [owned.id]
    assert [s async for s in client.list_sessions(owner="alice", state=SessionState.OPEN)] == []


async def test_the_owner_rule_holds_across_contexts(client: SessionClient, start_worker: StartWorker) -> None:
    """The context rule is the client's; the owner rule is the server's and holds in any context."""
    await start_worker()
    async with client.create_session(QUEUE, creation_timeout=10, owner="bob"):
        with pytest.raises(ExistingOpenSessionError):
            await enter_elsewhere(client.create_session(QUEUE, creation_timeout=10, owner="bob"))
