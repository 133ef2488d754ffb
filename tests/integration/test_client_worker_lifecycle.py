"""Worker liveness seen through the typed client: a killed worker, cancellation, a server restart,
and a draining shutdown, with real SessionWorker processes."""

from __future__ import annotations

import asyncio
import contextvars
import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from sessiond_client import (
    FailureCause,
    NoCapacityError,
    SessionClient,
    SessionCompletedError,
    SessionContext,
    SessionFailedError,
    SessionState,
)

from sessiond.config import ServerConfig
from sessiond.server import create_server
from tests.integration.conftest import ServerFactory, Sessiond, StartWorker
from tests.integration.workers.support import poll, workers_of

pytestmark = pytest.mark.asyncio

QUEUE = "lifecycle-q"
async def enter_elsewhere(session_context: SessionContext) -> str:
    """Enter and leave a session context in a fresh context (another caller); return the worker id."""

    async def enter() -> str:
        async with session_context as session:
            return session.info.worker.worker_id

    return await asyncio.get_running_loop().create_task(enter(), context=contextvars.Context())


@pytest_asyncio.fixture
async def sessiond(make_server: ServerFactory) -> Sessiond:
    """The default server, with the default recovery window (the restart test needs it)."""
    return await make_server(recovery_window=timedelta(seconds=30))


async def test_killing_the_worker_fails_the_in_flight_activity_with_worker_lost(
    client: SessionClient, start_worker: StartWorker, tmp_path: Path
) -> None:
    worker = await start_worker()
    marker = tmp_path / "blocked"
    async with client.create_session(QUEUE, creation_timeout=10) as session:
        running = asyncio.create_task(session.execute_activity("wait_cancelled", str(marker), 120))
        await poll(lambda: Path(str(marker) + ".started").exists(), what="activity started")
        killed_at = datetime.now(UTC)
        worker.signal(signal.SIGKILL)
        with pytest.raises(SessionFailedError) as caught:
            await asyncio.wait_for(running, 30)  # a guard against a hang; the delay is measured below
        assert caught.value.cause is FailureCause.WORKER_LOST
        assert caught.value.in_flight
        assert caught.value.session_id == session.id
        assert session.failed
        assert session.failure is not None and session.failure.cause is FailureCause.WORKER_LOST
        with pytest.raises(SessionFailedError):
            await session.execute_activity("echo", 1)
    info = await client.get_session_info(session.id)
    assert info.state is SessionState.FAILED  # completing on exit did not turn FAILED into CLOSED
    assert info.failure is not None and info.failure.cause is FailureCause.WORKER_LOST
    # At once, not at a heartbeat (20 s) or activity (120 s) timeout: the server's own close_time,
    # not when this test got to run again, measures how long the server took to notice the kill.
    assert info.close_time is not None and info.close_time - killed_at < timedelta(seconds=5)


async def test_completing_the_session_sets_a_sync_activitys_cancel_flag(
    client: SessionClient, start_worker: StartWorker, tmp_path: Path
) -> None:
    await start_worker()
    marker = tmp_path / "cancelled"
    async with client.create_session(QUEUE, creation_timeout=10) as session:
        running = asyncio.create_task(session.execute_activity("wait_cancelled", str(marker), 120))
        await poll(lambda: Path(str(marker) + ".started").exists(), what="activity started")
        await session.complete()
        with pytest.raises(SessionCompletedError):
            await asyncio.wait_for(running, 10)
    seen = json.loads(await poll(lambda: marker.exists() and marker.read_text(), what="cancel flag seen"))
    assert {key: seen[key] for key in ("cancelled", "reason")} == {"cancelled": True, "reason": "SESSION_COMPLETED"}


async def test_the_worker_reconnects_after_a_server_restart_and_the_session_survives_it(
    sessiond: Sessiond, client: SessionClient, start_worker: StartWorker
) -> None:
    worker = await start_worker(worker_id="stable-worker")
    restarted = None
    try:
        async with client.create_session(QUEUE, creation_timeout=10) as before:
            await client.get_session_info(before.id)
            first_incarnation = client.server_incarnation
            await sessiond.server.stop(0)  # the graceful stop: workers are told the server restarts
            restarted, port = await create_server(ServerConfig(listen=f"127.0.0.1:{sessiond.port}"))
            assert port == sessiond.port
            await restarted.start()
            found = await poll(
                lambda: _registered(client, worker.worker_id), within=20, what="worker back on the new server"
            )
            assert found.task_queue == QUEUE and found.open_sessions == 1
            assert worker.process.returncode is None
            # The worker reported the session and the new server adopted it: same id, same worker, and
            # the caller's handle (its watch rode through the restart) keeps working.
            info = await client.get_session_info(before.id)
            assert info.state is SessionState.OPEN and info.worker.worker_id == "stable-worker"
            assert client.server_incarnation not in (None, first_incarnation)
            assert await before.execute_activity("echo", "after restart") == "after restart"
            assert not before.failed
        assert (await client.get_session_info(before.id)).state is SessionState.CLOSED
    finally:
        if restarted is not None:
            await restarted.stop(0)


async def _registered(client: SessionClient, worker_id: str) -> object:
    try:
        return (await workers_of(client, QUEUE)).get(worker_id)
    except Exception:  # the new server may still be starting
        return None


async def test_sigterm_drains_the_worker(client: SessionClient, start_worker: StartWorker) -> None:
    draining = await start_worker(max_sessions=5)
    async with client.create_session(QUEUE, creation_timeout=10) as session:
        # An activity proves the worker has received the session before the signal.
        assert (await session.execute_activity("whoami"))["pid"] == draining.pid
        draining.signal(signal.SIGTERM)
        await poll(lambda: _is_draining(client, draining.worker_id), what="worker reported draining")
        # The open session stays OPEN and usable on the draining worker.
        assert (await session.execute_activity("whoami"))["pid"] == draining.pid
        assert (await client.get_session_info(session.id)).state is SessionState.OPEN
        # New sessions do not land on it: with no other worker there is no capacity ...
        with pytest.raises(NoCapacityError):
            await enter_elsewhere(client.create_session(QUEUE, creation_timeout=0))
        # ... and with another worker, they go there.
        other = await start_worker()
        assert await enter_elsewhere(client.create_session(QUEUE, creation_timeout=10)) == other.worker_id
        assert draining.process.returncode is None  # still serving its open session
    # Its last session completed: the worker leaves, cleanly.
    assert await draining.wait_exit(30) == 0
    assert draining.seen("stopped") is not None
    assert draining.worker_id not in await workers_of(client, QUEUE)
    assert (await client.get_session_info(session.id)).state is SessionState.CLOSED


async def test_a_second_sigterm_stops_at_once_and_fails_open_sessions(
    client: SessionClient, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    async with client.create_session(QUEUE, creation_timeout=10) as session:
        assert (await session.execute_activity("whoami"))["pid"] == worker.pid
        worker.signal(signal.SIGTERM)
        await poll(lambda: _is_draining(client, worker.worker_id), what="worker reported draining")
        worker.signal(signal.SIGTERM)
        failure = await asyncio.wait_for(session.wait_failed(), 10)
        assert failure is not None and failure.cause is FailureCause.WORKER_SHUTDOWN
    assert await worker.wait_exit(30) == 0


async def _is_draining(client: SessionClient, worker_id: str) -> bool:
    info = (await workers_of(client, QUEUE)).get(worker_id)
    return info is not None and info.draining


async def test_a_drain_that_outlasts_its_grace_fails_what_is_left(
    client: SessionClient, start_worker: StartWorker
) -> None:
    worker = await start_worker(grace=0.5)
    async with client.create_session(QUEUE, creation_timeout=10) as session:
        assert (await session.execute_activity("whoami"))["pid"] == worker.pid
        worker.signal(signal.SIGTERM)
        failure = await asyncio.wait_for(session.wait_failed(), 15)
        assert failure is not None and failure.cause is FailureCause.WORKER_SHUTDOWN
    assert await worker.wait_exit(30) == 0
