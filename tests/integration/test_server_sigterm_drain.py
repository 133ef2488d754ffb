"""SIGTERM of sessiond drains first (``--drain-timeout``): an activity a worker runs finishes and its
caller gets the real result, an activity asked for meanwhile waits for the restarted server (the
client repeats the RECOVERING refusal: nothing was sent), the worker keeps its session, and the
restarted server adopts it. With ``--drain-timeout 0`` the in-flight activity ends SHUTTING_DOWN, as
before the drain existed.

Real processes: ``sessiond serve``, a library worker, the Python client in the test; every wait is a
poll with a deadline."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sessiond_client import ServerShuttingDownError, Session, SessionClient, SessionState

from tests.integration.faults import ServerProcess, not_serving
from tests.integration.workers.support import ClientWorkerProcess, poll, worker_pool, workers_of

pytestmark = pytest.mark.asyncio

QUEUE = "drain-q"


@asynccontextmanager
async def _running(*flags: str) -> AsyncIterator[tuple[ServerProcess, ClientWorkerProcess, SessionClient, Session]]:
    """A server process, a worker process holding one session of a client in the test."""
    server = ServerProcess("--log-level", "INFO", "--recovery-window", "30", *flags)
    await server.start()
    try:
        async with worker_pool() as start:
            worker = await start(server.target, QUEUE, worker_id="keeper")
            async with await SessionClient.connect(server.target, default_rpc_timeout=30) as client, \
                    client.create_session(QUEUE, creation_timeout=10) as session:
                yield server, worker, client, session
    finally:
        print(await server.stop())  # stderr: shown with a failure


async def _in_flight(session: Session, gate: Path) -> asyncio.Task[Any]:
    """An activity running on the worker until the test creates the file ``gate`` ("done"), unless
    it is cancelled first ("cancelled")."""
    call = asyncio.create_task(session.execute_activity("gate", str(gate), start_to_close_timeout=300))
    await poll(gate.with_suffix(".started").exists, within=10, what="the activity runs on the worker")
    return call


async def _exit_log(server: ServerProcess) -> str:
    """Wait until the server process exits (0) after SIGTERM; what it logged."""
    assert server.process is not None
    assert await asyncio.wait_for(server.process.wait(), 30) == 0
    log = await server.stop()
    assert "Traceback" not in log, log
    return log


async def _restarted(server: ServerProcess, client: SessionClient, session: Session) -> None:
    """Start the next server on the same address; it adopts the session from its worker."""
    await server.start()

    async def adopted() -> bool:
        return (await client.get_session_info(session.id)).state is SessionState.OPEN

    await poll(adopted, within=30, what="the session adopted by the next server")


async def test_sigterm_lets_the_activity_in_flight_finish_and_the_restarted_server_adopts_the_session(
        tmp_path: Path) -> None:
    async with _running("--drain-timeout", "120") as (server, worker, client, session):
        gate = tmp_path / "gate"
        in_flight = await _in_flight(session, gate)

        server.signal(signal.SIGTERM)
        await poll(lambda: not_serving(server.target), within=10, what="health NOT_SERVING (draining)")
        # Asked while the server drains: refused (nothing sent); the client asks again until a server takes it.
        later = asyncio.create_task(session.execute_activity("echo", "after the restart", start_to_close_timeout=60))
        await poll(lambda: not_serving(server.target), within=10, what="still draining")
        assert not in_flight.done()

        # The activity ends on the worker (never cancelled) and its caller gets the real result.
        gate.touch()
        assert await asyncio.wait_for(in_flight, 20) == "done"
        log = await _exit_log(server)
        assert "draining before the restart: 1 activities in flight" in log, log
        assert "1 of 1 activities finished, 0 cut" in log, log
        assert not later.done()

        await _restarted(server, client, session)
        assert await asyncio.wait_for(later, 30) == "after the restart"
        info = await client.get_session_info(session.id)
        assert info.state is SessionState.OPEN and info.worker.worker_id == "keeper"
        assert (await workers_of(client, QUEUE))["keeper"].open_sessions == 1
        assert await session.execute_activity("echo", "again") == "again"
        assert not session.failed
        assert worker.process.returncode is None


async def test_with_drain_timeout_0_the_activity_in_flight_ends_shutting_down_as_before(tmp_path: Path) -> None:
    async with _running("--drain-timeout", "0") as (server, _worker, client, session):
        in_flight = await _in_flight(session, tmp_path / "gate")

        server.signal(signal.SIGTERM)
        with pytest.raises(ServerShuttingDownError):  # outcome unknown: it may have run
            await asyncio.wait_for(in_flight, 20)
        assert "0 of 1 activities finished, 1 cut" in await _exit_log(server)

        await _restarted(server, client, session)
        assert await session.execute_activity("echo", "again") == "again"


async def test_a_second_sigterm_ends_the_drain_at_once(tmp_path: Path) -> None:
    async with _running("--drain-timeout", "120") as (server, _worker, client, session):
        in_flight = await _in_flight(session, tmp_path / "gate")

        server.signal(signal.SIGTERM)
        await poll(lambda: not_serving(server.target), within=10, what="health NOT_SERVING (draining)")
        server.signal(signal.SIGTERM)  # the operator does not want to wait
        with pytest.raises(ServerShuttingDownError):
            await asyncio.wait_for(in_flight, 30)
        assert "0 of 1 activities finished, 1 cut" in await _exit_log(server)
        await _restarted(server, client, session)  # the session is not lost either
