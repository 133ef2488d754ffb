"""The README's worker and caller code runs as written, against a real server."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from sessiond.config import ServerConfig
from sessiond.server import SessiondServer, create_server

ROOT = Path(__file__).resolve().parents[2]


def _snippet(heading: str) -> str:
    section = (ROOT / "README.md").read_text().split(f"## {heading}", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[SessiondServer, str]]:
    running, port = await create_server(ServerConfig(listen="127.0.0.1:0"))
    await running.start()
    yield running, f"127.0.0.1:{port}"
    await running.stop(0)


async def _python(code: str, target: str, tmp: Path, name: str) -> asyncio.subprocess.Process:
    script = tmp / f"{name}.py"
    script.write_text(code.replace("127.0.0.1:50051", target))
    return await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"})


@pytest.mark.asyncio
async def test_the_readme_worker_and_caller_run_as_written(server: tuple[SessiondServer, str], tmp_path: Path) -> None:
    running, target = server
    worker = await _python(_snippet("Write a worker"), target, tmp_path, "worker")
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while not running.engine.table.workers()[0]:
            assert worker.returncode is None and asyncio.get_running_loop().time() < deadline, "worker never registered"
            await asyncio.sleep(0.05)
        caller = await _python(_snippet("Write a caller"), target, tmp_path, "caller")
        output, _ = await asyncio.wait_for(caller.communicate(), 60)
        assert caller.returncode == 0, output.decode()
        assert output.decode().startswith("on ")
    finally:
        worker.terminate()  # SIGTERM: the README says it drains and exits
        await asyncio.wait_for(worker.wait(), 30)
    assert worker.returncode == 0
