"""`sessiond worker MODULE:ATTR --queue Q --max-sessions N --address A` as a real process: it serves the
activities, declares its limit, drains on SIGTERM (exit 0 once its session completes), reconnects to a
restarted server, and rejects a bad MODULE:ATTR with one line and exit code 2."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sessiond_client import SessionClient

from sessiond.config import ServerConfig
from sessiond.server import SessiondServer, create_server
from tests.integration.conftest import REPO_ROOT, eventually

QUEUE = "cli-q"
SPEC = "tests.library.cli_activities:ACTIVITIES"


async def _server(port: int = 0) -> tuple[SessiondServer, int]:
    server, bound = await create_server(ServerConfig(listen=f"127.0.0.1:{port}"))
    await server.start()
    return server, bound


async def _spawn(*argv: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
    env.pop("SESSIOND_ADDRESS", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiond", "worker", *argv, cwd=REPO_ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


@pytest_asyncio.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.kill()
        await process.communicate()


def _workers(server: SessiondServer) -> list[tuple[str, int]]:
    return [(w.identity, w.capacity["sessions"]) for w in server.engine.table.workers(task_queue=QUEUE)[0]]


@pytest.mark.asyncio
async def test_the_cli_worker_serves_its_activities_and_drains_on_sigterm(
        processes: list[asyncio.subprocess.Process]) -> None:
    server, port = await _server()
    try:
        process = await _spawn(SPEC, "--queue", QUEUE, "--max-sessions", "2", "--address", f"127.0.0.1:{port}",
                               "--identity", "cli-worker")
        processes.append(process)
        await eventually(lambda: _workers(server), timeout=30, message="the CLI worker registered")
        assert _workers(server) == [("cli-worker", 2)]

        async with await SessionClient.connect(f"127.0.0.1:{port}") as client:
            async with client.create_session(QUEUE, creation_timeout=5) as session:
                assert await session.execute_activity("pid") == process.pid
                assert await session.execute_activity("shout", "hi") == "HI"
                process.send_signal(signal.SIGTERM)  # drain: the open session keeps its worker
                await eventually(lambda: server.engine.table.workers(task_queue=QUEUE)[0][0].draining,
                                 message="the worker said goodbye with drain")
                assert await session.execute_activity("shout", "still here") == "STILL HERE"
                assert process.returncode is None
            # The block completed the session: the drained worker leaves.
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
    finally:
        await server.stop(0)


@pytest.mark.asyncio
async def test_the_cli_worker_reconnects_to_a_restarted_server(processes: list[asyncio.subprocess.Process]) -> None:
    server, port = await _server()
    process = await _spawn("tests.library.cli_activities:BY_NAME", "--queue", QUEUE, "--address",
                           f"127.0.0.1:{port}")
    processes.append(process)
    try:
        await eventually(lambda: _workers(server), timeout=30, message="the CLI worker registered")
    finally:
        await server.stop(0)
    restarted, _ = await _server(port)
    try:
        await eventually(lambda: _workers(restarted), timeout=30, message="the CLI worker came back")
        async with await SessionClient.connect(f"127.0.0.1:{port}") as client:
            async with client.create_session(QUEUE, creation_timeout=5) as session:
                assert await session.execute_activity("yell", "again") == "AGAIN"
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0
    finally:
        await restarted.stop(0)


@pytest.mark.asyncio
@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module:ACTIVITIES", "cannot import 'no_such_module': ModuleNotFoundError"),
    ("tests.library.cli_activities:MISSING", "has no attribute 'MISSING'"),
    ("tests.library.cli_activities:NOT_ACTIVITIES", "must be a non-empty list of activity functions"),
    ("tests.library.cli_activities", "expected MODULE:ATTR"),
])
async def test_a_bad_module_attr_is_one_line_and_exit_code_2(spec: str, message: str) -> None:
    process = await _spawn(spec, "--queue", QUEUE, "--address", "127.0.0.1:1")
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sessiond worker: ") and message in lines[0], lines


@pytest.mark.asyncio
async def test_the_cli_worker_declares_capacities_and_labels(processes: list[asyncio.subprocess.Process]) -> None:
    server, port = await _server()
    try:
        process = await _spawn(SPEC, "--queue", QUEUE, "--address", f"127.0.0.1:{port}", "--capacity", "gpu=2",
                               "--capacity", "scratch_gb=500", "--label", "zone=a", "--label", "gpu_model=h100")
        processes.append(process)
        await eventually(lambda: _workers(server), timeout=30, message="the CLI worker registered")
        (worker,) = server.engine.table.workers(task_queue=QUEUE)[0]
        assert worker.capacity.as_dict() == {"sessions": 1000, "gpu": 2, "scratch_gb": 500}
        assert dict(worker.labels) == {"zone": "a", "gpu_model": "h100"}
        async with await SessionClient.connect(f"127.0.0.1:{port}") as client:
            async with client.create_session(QUEUE, resources={"gpu": 2}, selector="gpu_model in (h100,a100)",
                                             creation_timeout=5) as session:
                assert await session.execute_activity("pid") == process.pid
    finally:
        await server.stop(0)


@pytest.mark.asyncio
@pytest.mark.parametrize(("flag", "message"), [
    (("--capacity", "gpu"), "expected NAME=N"),
    (("--capacity", "gpu=-1"), "must not be negative"),
    (("--capacity", "gpu=two"), "expected a whole number"),
    (("--capacity", "g pu=1"), "must be letters, digits"),
    (("--label", "zone"), "expected KEY=VALUE"),
    (("--label", "zone=a b"), "must be letters, digits"),
])
async def test_bad_capacity_or_label_flags_are_usage_errors(flag: tuple[str, str], message: str) -> None:
    process = await _spawn(SPEC, "--queue", QUEUE, "--address", "127.0.0.1:1", *flag)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert message in err.decode()
