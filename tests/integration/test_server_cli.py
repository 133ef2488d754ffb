"""The ``sessiond`` command as a user runs it: help text, a real server process, health, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import fields

import pytest

from sessiond.config import ServerConfig
from sessiond.testing.ports import free_port
from tests.integration.conftest import QUEUE, REPO_ROOT, eventually
from tests.integration.faults import ServerProcess
from tests.integration.rawworker import RawWorker

ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}


async def _sessiond(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiond", *args, cwd=REPO_ROOT, env=env or ENV,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _run(*args: str) -> tuple[int, str, str]:
    process = await _sessiond(*args)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.asyncio
async def test_serve_help_documents_every_config_field_as_a_flag_and_an_environment_variable() -> None:
    code, out, _ = await _run("serve", "--help")

    assert code == 0
    text = " ".join(out.split())  # argparse wraps long lines
    for field in fields(ServerConfig):
        assert f"--{field.name.replace('_', '-')}" in text, field.name
        assert f"SESSIOND_{field.name.upper()}" in text, field.name


@pytest.mark.asyncio
async def test_health_exits_nonzero_when_nothing_listens() -> None:
    code, _, err = await _run("health", "--address", f"127.0.0.1:{free_port()}", "--timeout", "1")

    assert code == 1
    assert "unhealthy" in err


@pytest.mark.asyncio
async def test_the_server_process_is_healthy_then_stops_cleanly_on_sigterm() -> None:
    server = await ServerProcess(env={"SESSIOND_SHUTDOWN_GRACE": "3"}).start()  # listening, as itself
    address = server.target
    worker = RawWorker(address, QUEUE, worker_id="w1")
    try:
        async def healthy() -> bool:
            code, out, _ = await _run("health", "--address", address, "--timeout", "1")
            return code == 0 and out.strip() == "SERVING"

        await eventually(healthy, timeout=30, interval=0.2)
        await worker.start()
        loop = asyncio.get_running_loop()
        started = loop.time()

        server.signal(signal.SIGTERM)

        code, err = await asyncio.wait_for(server.wait(), 10)
        assert code == 0, err
        assert loop.time() - started < 10
        assert "Traceback" not in err, err
        await eventually(lambda: worker.stream_done.is_set(), message="the worker was told the server left")
    finally:
        await worker.stop()
        await server.stop()
