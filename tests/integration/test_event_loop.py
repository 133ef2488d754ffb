"""``--loop uvloop``: a real server process and a real ``sessiond worker`` process on uvloop serve
activities end to end; an unknown loop is a one-line start-up error."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from sessiond_client import SessionClient

from tests.integration.conftest import REPO_ROOT, eventually
from tests.integration.faults import ServerProcess

QUEUE = "loop-q"
SPEC = "tests.library.cli_activities:ACTIVITIES"


@pytest.mark.asyncio
async def test_a_server_and_a_cli_worker_on_uvloop_serve_activities() -> None:
    server = await ServerProcess("--loop", "uvloop", "--log-level", "WARNING").start()
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiond", "worker", SPEC, "--queue", QUEUE, "--address", server.target,
        "--loop", "uvloop", cwd=REPO_ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with await SessionClient.connect(server.target) as client:
            async def registered() -> bool:
                return bool([w async for w in client.list_workers(task_queue=QUEUE)])

            await eventually(registered, timeout=30, message="the uvloop worker registered")
            async with client.create_session(QUEUE, creation_timeout=5) as session:
                results = await asyncio.gather(*(session.execute_activity("shout", f"x{i}") for i in range(50)))
                assert results == [f"X{i}" for i in range(50)]
                assert await session.execute_activity("pid") == worker.pid
    finally:
        if worker.returncode is None:
            worker.kill()
        await worker.communicate()
        await server.stop()


@pytest.mark.asyncio
async def test_an_unknown_loop_is_a_one_line_start_up_error() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiond", "serve", "--listen", "127.0.0.1:0", "--loop", "tokio", cwd=REPO_ROOT,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    lines = err.decode().strip().splitlines()
    assert process.returncode == 2
    assert len(lines) == 1 and "loop must be asyncio or uvloop" in lines[0], lines
