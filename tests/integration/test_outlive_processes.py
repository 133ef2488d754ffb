"""Sessions that outlive processes, with real processes and real signals (SPEC §6.2, §6.1 last item).

Callers, workers and (for the restart tests) sessiond itself run as separate OS processes; every
wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta

import pytest
from sessiond_client import (
    FailureCause,
    NoCapacityError,
    Session,
    SessionClient,
    SessionContext,
    SessionInfo,
    SessionState,
    WorkerDetachedError,
)

from sessiond.testing.ports import free_port, listening
from tests.integration.conftest import REPO_ROOT, ServerFactory, Sessiond, StartWorker
from tests.integration.workers.support import ClientWorkerProcess, poll, start_worker, workers_of

QUEUE = "outlive-q"
WORKERS_DIR = REPO_ROOT / "tests" / "integration" / "workers"
ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}

pytestmark = pytest.mark.asyncio


async def _enter(stack: AsyncExitStack, session: SessionContext) -> Session:
    """Open a session in a context of its own (one caller's block may hold one open session)."""
    return await asyncio.create_task(stack.enter_async_context(session))


async def _spawn(script: str, *args: str) -> ClientWorkerProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKERS_DIR / script), *args, stdout=asyncio.subprocess.PIPE, env=ENV, cwd=REPO_ROOT)
    return ClientWorkerProcess(process)


# --------------------------------------------------------------------- caller liveness


async def test_a_killed_caller_frees_a_max_1_worker_within_its_caller_timeout(
        sessiond: Sessiond, client: SessionClient, start_worker: StartWorker) -> None:
    await start_worker(max_sessions=1)
    caller = await _spawn("caller.py", "--target", sessiond.target, "--task-queue", QUEUE, "--caller-timeout", "2")
    try:
        session_id = (await caller.wait_event("open"))["session_id"]
        loop = asyncio.get_running_loop()

        async def seen() -> SessionInfo:
            # Read through the operator's list: a GetSessionInfo on the id would itself attend the session.
            found = [s async for s in client.list_sessions(task_queue=QUEUE) if s.session_id == session_id]
            return found[0]

        # While the caller lives, its watch attends the session: it outlives caller_timeout.
        alive_until = loop.time() + 3.0
        while loop.time() < alive_until:
            assert (await seen()).state is SessionState.OPEN
            await asyncio.sleep(0.2)
        caller.signal(signal.SIGKILL)
        killed = loop.time()

        async def lost() -> bool:
            return (await seen()).state is SessionState.FAILED

        await poll(lost, within=2.0 + 1.0, what="CALLER_LOST within caller_timeout + 1 s")
        info = await seen()
        assert info.failure is not None and info.failure.cause is FailureCause.CALLER_LOST
        assert loop.time() - killed >= 1.5, "the session was failed before its caller_timeout"
        # The next caller gets the worker.
        async with client.create_session(QUEUE, creation_timeout=5) as nxt:
            assert nxt.state is SessionState.OPEN
    finally:
        await caller.reap()


# --------------------------------------------------------------------- worker reattach


async def test_a_restarted_worker_gets_its_three_sessions_back_and_the_limit_holds_meanwhile(
        sessiond: Sessiond, client: SessionClient, start_worker: StartWorker) -> None:
    worker = await start_worker(worker_id="phoenix", max_sessions=3)
    async with AsyncExitStack() as stack:
        sessions: list[Session] = [
            await _enter(stack, client.create_session(QUEUE, creation_timeout=10, reattach_timeout=10))
            for _ in range(3)
        ]
        token = sessions[0].recreate_token
        for session in sessions:
            assert await session.execute_activity("echo", session.id) == session.id
        in_flight = asyncio.create_task(sessions[0].execute_activity("sleep", 30))
        table = sessiond.server.engine.table
        await poll(lambda: table.get(sessions[0].id).activities, what="the long activity reached the server")

        worker.signal(signal.SIGKILL)
        with pytest.raises(WorkerDetachedError):
            await asyncio.wait_for(in_flight, 10)
        # Detached, not failed: callers see it (the watch reports detached_since).
        await poll(lambda: all(s.info.detached for s in sessions), within=10, what="watches report detached")
        for session in sessions:
            info = await client.get_session_info(session.id)
            assert info.state is SessionState.OPEN and info.detached_since is not None
        # A new activity waits for the worker instead of failing.
        waiting = asyncio.create_task(sessions[1].execute_activity("echo", "waited", start_to_close_timeout=20))

        again = await start_worker(worker_id="phoenix", max_sessions=3)
        await poll(lambda: len([e for e in again.events if e.get("event") == "reattached"]) == 3,
                   what="the new process was told of its three sessions")
        assert await asyncio.wait_for(waiting, 15) == "waited"
        await poll(lambda: not any(s.info.detached for s in sessions), within=10, what="watches report reattached")
        for session in sessions:
            assert await session.execute_activity("whoami") is not None
            assert (await session.execute_activity("whoami"))["pid"] == again.pid
        # The slots were kept through the restart: the worker is full, nothing more lands there.
        workers = await workers_of(client, QUEUE)
        assert workers["phoenix"].open_sessions == 3 == workers["phoenix"].max_concurrent_sessions
        with pytest.raises(NoCapacityError):
            async with client.recreate_session(token, creation_timeout=0):
                pass
        assert not any(s.failed for s in sessions)


async def test_a_worker_that_does_not_come_back_fails_its_detached_sessions_at_the_reattach_timeout(
        sessiond: Sessiond, client: SessionClient, start_worker: StartWorker) -> None:
    worker = await start_worker(worker_id="gone", max_sessions=1)
    async with client.create_session(QUEUE, creation_timeout=10, reattach_timeout=2) as session:
        loop = asyncio.get_running_loop()
        worker.signal(signal.SIGKILL)
        killed = loop.time()
        failure = await asyncio.wait_for(session.wait_failed(), 2 + 3)
        assert failure is not None and failure.cause is FailureCause.WORKER_LOST
        assert loop.time() - killed >= 1.5


async def test_a_restarted_worker_may_give_a_session_back(
        sessiond: Sessiond, client: SessionClient, start_worker: StartWorker) -> None:
    worker = await start_worker(worker_id="forgetful", max_sessions=1)
    async with client.create_session(QUEUE, creation_timeout=10, reattach_timeout=10) as session:
        worker.signal(signal.SIGKILL)
        await poll(lambda: session.info.detached, what="detached")
        await start_worker(worker_id="forgetful", max_sessions=1, decline_reattached=True)
        failure = await asyncio.wait_for(session.wait_failed(), 10)
        assert failure is not None and failure.cause is FailureCause.WORKER_LOST


# --------------------------------------------------------------------- one live process per worker_id


async def test_a_second_live_process_is_refused_and_a_frozen_replaced_one_does_not_come_back(
        make_server: ServerFactory) -> None:
    # A short heartbeat interval keeps the staleness period (3 intervals) short.
    sessiond = await make_server(max_heartbeat_interval=timedelta(seconds=0.5))
    async with await SessionClient.connect(sessiond.target, default_rpc_timeout=10) as client:
        first = await start_worker(sessiond.target, QUEUE, worker_id="dup", max_sessions=2)
        second = third = None
        try:
            async with client.create_session(QUEUE, creation_timeout=10, reattach_timeout=10) as session:
                assert (await session.execute_activity("whoami"))["pid"] == first.pid
                # A second live process is refused, retries only while the first could go stale, then stops.
                second = await start_worker(sessiond.target, QUEUE, worker_id="dup", wait="error")
                error = second.seen("error")
                assert error is not None and error["reason"] == "WORKER_ID_IN_USE"
                assert await second.wait_exit() == 2
                assert (await session.execute_activity("whoami"))["pid"] == first.pid
                assert not session.failed and not session.info.detached

                # Frozen past its staleness, the first is replaced; woken up, it is told and stops.
                first.signal(signal.SIGSTOP)
                third = await start_worker(sessiond.target, QUEUE, worker_id="dup", max_sessions=2)
                await poll(lambda: third.seen("reattached"), what="the session moved to the new process")
                first.signal(signal.SIGCONT)
                replaced = await first.wait_event("error")
                assert replaced["reason"] == "WORKER_REPLACED"
                assert await first.wait_exit() == 2
                # No flapping: the new process stays registered and keeps the session.
                assert (await session.execute_activity("whoami"))["pid"] == third.pid
                workers = await workers_of(client, QUEUE)
                assert workers["dup"].identity.startswith(f"{third.pid}@")
                assert not session.failed
        finally:
            for proc in (first, second, third):
                if proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.signal(signal.SIGCONT)
                    await proc.reap()


# --------------------------------------------------------------------- server restart (sessiond as a process)


class ServerProcess:
    """``python -m sessiond serve`` on a fixed port, restartable."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = args
        self.process: asyncio.subprocess.Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start it and wait until it listens on its port (it, not whatever else may listen there).
        Raises :class:`_ExitedAtStart` if it exits first."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sessiond", "serve", "--listen", self.target, "--log-level", "WARNING",
            *self.args, env=ENV, cwd=REPO_ROOT)

        async def up() -> bool:
            assert self.process is not None
            if self.process.returncode is not None:
                raise _ExitedAtStart(self.process.returncode)
            return listening(self.process.pid, self.port)

        await poll(up, within=30, what="sessiond listening")

    async def stop(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)
            await asyncio.wait_for(self.process.wait(), 30)


class _ExitedAtStart(AssertionError):
    """sessiond exited before it listened (with this exit code)."""


@contextlib.asynccontextmanager
async def _server(*args: str) -> AsyncIterator[ServerProcess]:
    for attempt in range(5):
        server = ServerProcess(free_port(), *args)
        try:
            await server.start()
            break
        except _ExitedAtStart as exited:
            # Exit 2 is a startup error; with these arguments, the free port taken by another
            # program before sessiond bound it. A new port then (its restarts keep this one).
            if exited.args[0] != 2 or attempt == 4:
                raise
    try:
        yield server
    finally:
        await server.stop(signal.SIGKILL)


@contextlib.asynccontextmanager
async def _worker_processes(target: str, processes: int, per_process: int) -> AsyncIterator[list[ClientWorkerProcess]]:
    procs = [await _spawn("many_workers.py", "--target", target, "--task-queue", QUEUE, "--count", str(per_process),
                          "--prefix", f"p{i}") for i in range(processes)]
    try:
        for proc in procs:
            await proc.wait_event("registered", within=120)
        yield procs
    finally:
        for proc in procs:
            await proc.reap()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
async def test_a_thousand_sessions_on_two_hundred_workers_survive_a_server_restart(sig: int) -> None:
    async with _server() as server, _worker_processes(server.target, 4, 50):
        async with await SessionClient.connect(server.target, default_rpc_timeout=30) as client, \
                AsyncExitStack() as stack:
            sessions: list[Session] = []
            for first in range(0, 1000, 100):
                sessions += await asyncio.gather(*(
                    _enter(stack, client.create_session(QUEUE, creation_timeout=10, owner=f"owner-{i}"))
                    for i in range(first, first + 100)))
            before = {s.id: (s.info.owner, s.info.worker.worker_id) for s in sessions}
            assert len({worker for _, worker in before.values()}) == 200
            # An activity per session proves its worker holds it: a session whose SessionStarted is
            # still on its way to the worker when sessiond dies is not reported, so it is lost
            # (SESSION_LOST); see the README.
            for first in range(0, 1000, 100):
                await asyncio.gather(*(s.execute_activity("echo", 1) for s in sessions[first:first + 100]))

            await server.stop(sig)
            await server.start()

            async def all_open() -> bool:
                workers = await workers_of(client, QUEUE)
                return len(workers) == 200 and sum(w.open_sessions for w in workers.values()) == 1000

            try:
                await poll(all_open, within=60, every=0.5, what="every session adopted again")
            except AssertionError:
                workers = await workers_of(client, QUEUE)
                listed = [s async for s in client.list_sessions(task_queue=QUEUE)]
                states = sorted({(s.state.name, s.failure.cause.name if s.failure else "") for s in listed})
                raise AssertionError(
                    f"{len(workers)} workers back, {sum(w.open_sessions for w in workers.values())} open sessions; "
                    f"{len(listed)} sessions known, states {states}; watches failed: "
                    f"{sorted({str(s.failure) for s in sessions if s.failed})[:3]}") from None
            for first in range(0, 1000, 100):
                infos = await asyncio.gather(*(client.get_session_info(s.id) for s in sessions[first:first + 100]))
                for info in infos:
                    assert info.state is SessionState.OPEN
                    assert (info.owner, info.worker.worker_id) == before[info.session_id]
            # The callers saw nothing: no watch reported a failure, and their next activities run.
            assert not any(s.failed for s in sessions)
            for session in sessions[::50]:
                assert await session.execute_activity("echo", session.id) == session.id
        # Leaving the block completed every session on the restarted server.


async def test_a_server_that_does_not_come_back_ends_in_a_bounded_truthful_outcome() -> None:
    window = 3.0
    async with _server("--recovery-window", str(window)) as server:
        worker = await start_worker(server.target, QUEUE, worker_id="orphan")
        try:
            async with await SessionClient.connect(server.target, default_rpc_timeout=5,
                                                   recovery_window=window) as client:
                async with client.create_session(QUEUE, creation_timeout=10) as session:
                    loop = asyncio.get_running_loop()
                    # Taken before the kill: the library may see the dead server before stop() has reaped
                    # the process on a loaded box, and its window starts from what it saw.
                    killed = loop.time()
                    await server.stop(signal.SIGKILL)
                    # The caller's library: FAILED SERVER_UNREACHABLE once no server answered for the window
                    # (bounded: the window plus one watch backoff, with room for a loaded box).
                    failure = await asyncio.wait_for(session.wait_failed(), window + 8)
                    assert failure is not None and failure.cause is FailureCause.SERVER_UNREACHABLE
                    assert loop.time() - killed >= window
                    # The worker dropped it too: a server that comes back now gets no report of it.
                    server.args = ("--recovery-window", "30")
                    await server.start()

                    async def back_empty() -> bool:
                        found = (await workers_of(client, QUEUE)).get("orphan")
                        return found is not None and found.open_sessions == 0

                    await poll(back_empty, within=20, what="the worker back, holding nothing")
        finally:
            await worker.reap()
