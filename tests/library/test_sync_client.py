"""SyncSessionClient: the blocking API keeps the async client's semantics (typed results, completion on
exit, the context rule, failure the moment the worker dies, recreate). The server and workers run on the
test's loop; the blocking caller runs in a thread, as a non-asyncio program would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from sessiond_client import (
    ActivityError,
    FailureCause,
    SessionAlreadyOpenError,
    SessionFailedError,
    SessionState,
    activity,
)
from sessiond_client.sync import SyncSessionClient
from sessiond_client.testing import SessiondEnvironment

from tests.integration.conftest import eventually

RUNNING = threading.Event()


@dataclass(frozen=True)
class Line:
    number: int
    text: str


@activity.defn
async def split(text: str) -> list[Line]:
    return [Line(i, t) for i, t in enumerate(text.splitlines(), 1)]


@activity.defn
def hang() -> None:
    RUNNING.set()
    activity.wait_for_cancelled(30)


@activity.defn
def boom() -> None:
    raise ValueError("boom")


@pytest_asyncio.fixture
async def env() -> AsyncIterator[SessiondEnvironment]:
    RUNNING.clear()
    async with SessiondEnvironment.start(activities=[split, hang, boom], max_concurrent_sessions=2) as env:
        yield env


@pytest.mark.asyncio
async def test_a_blocking_caller_runs_typed_activities_and_the_session_is_completed_on_exit(
        env: SessiondEnvironment) -> None:
    def caller() -> tuple[list[Line], str, SessionState]:
        with SyncSessionClient(env.target) as client:
            with client.create_session(env.task_queue, creation_timeout=5) as session:
                lines = session.execute_activity(split, "a\nb")
                with pytest.raises(ActivityError, match="ValueError: boom"):
                    session.execute_activity("boom")
                session_id = session.id
            return lines, session_id, client.get_session_info(session_id).state

    lines, session_id, state = await asyncio.to_thread(caller)

    assert lines == [Line(1, "a"), Line(2, "b")]  # decoded by split's return annotation
    assert state is SessionState.CLOSED
    assert (await env.client.get_session_info(session_id)).state is SessionState.CLOSED


@pytest.mark.asyncio
async def test_the_context_rule_holds_per_thread_and_listing_and_recreate_work(env: SessiondEnvironment) -> None:
    def caller() -> tuple[list[str], str, str]:
        with SyncSessionClient(env.target) as client:
            with client.create_session(env.task_queue) as session:
                with pytest.raises(SessionAlreadyOpenError), client.create_session(env.task_queue):
                    pass
                listed = [s.session_id for s in client.list_sessions(state=SessionState.OPEN, page_size=1)]
                token, first_worker = session.recreate_token, session.info.worker.worker_id
            with client.recreate_session(token) as again:
                return listed, first_worker, again.info.worker.worker_id

    listed, first_worker, second_worker = await asyncio.to_thread(caller)

    assert len(listed) == 1
    assert first_worker == second_worker


@pytest.mark.asyncio
async def test_a_running_activity_fails_at_once_when_the_worker_dies(env: SessiondEnvironment) -> None:
    [worker] = env.workers
    outcome: dict[str, object] = {}

    def caller() -> None:
        with SyncSessionClient(env.target) as client, client.create_session(env.task_queue) as session:
            try:
                session.execute_activity(hang, start_to_close_timeout=60)
            except SessionFailedError as err:
                outcome["cause"], outcome["in_flight"] = err.cause, err.in_flight
            outcome["failure"] = session.wait_failed(timeout=5)

    blocked = asyncio.create_task(asyncio.to_thread(caller))
    await eventually(RUNNING.is_set)
    await env.lose_worker(worker)
    await asyncio.wait_for(blocked, 20)

    assert outcome["cause"] is FailureCause.WORKER_LOST and outcome["in_flight"] is True
    assert getattr(outcome["failure"], "cause", None) is FailureCause.WORKER_LOST


def test_an_unreachable_server_is_an_error_and_leaves_no_thread_behind() -> None:
    from sessiond_client import RPCError

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(RPCError) as caught:
        SyncSessionClient("127.0.0.1:1", default_rpc_timeout=0.3)
    assert caught.value.code is not None and caught.value.code.name == "UNAVAILABLE"
    assert "sessiond-sync-client" not in {t.name for t in threading.enumerate()} - before


@pytest.mark.asyncio
async def test_a_result_that_does_not_fit_the_requested_type_names_the_activity(env: SessiondEnvironment) -> None:
    async with env.client.create_session(env.task_queue) as session:
        with pytest.raises(TypeError, match=r"cannot decode the result of activity 'split' as int: .*expected int"):
            await session.execute_activity("split", "a", result_type=int)
        assert session.state is SessionState.OPEN
