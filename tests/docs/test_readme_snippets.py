"""Every code block of both READMEs runs as written, against a real server (or says why it cannot).

A block is preceded by a marker, ``<!-- snippet: group=G role=R [file=F] [uses=F,...] -->`` or
``<!-- snippet: skip (reason) -->``. The blocks of one group run together, in order, in one
directory, against a fresh server on a free port (``127.0.0.1:50051`` in the text is replaced by
it):

- ``worker``: a Python file started as a process; it must register, and exit 0 on SIGTERM (drain);
- ``shell-worker``: the same for a ``sessiond worker ...`` command line;
- ``run``: a Python file run to its end (exit 0);
- ``pytest``: a Python file run with pytest (every test passes);
- ``node``: the Node interop client's command line, against a real Python SessionWorker; it must
  also be the command ``interop/node/client.js`` documents in its header.

``file=`` names the file a block is written to (so another block can import it); ``uses=`` copies
such files from other groups. Python blocks are never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sessiond_client import SessionWorker, activity

from sessiond.config import ServerConfig
from sessiond.server import SessiondServer, create_server
from tests.integration.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", ROOT / "clients" / "python" / "README.md"]
ADDRESS = "127.0.0.1:50051"
_BLOCK = re.compile(r"(?:<!-- snippet: (?P<marker>.*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)


@dataclass
class Snippet:
    """One fenced block of a README and what its marker says."""

    source: str
    lang: str
    code: str
    marker: str | None
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def skip_reason(self) -> str | None:
        match = re.fullmatch(r"skip \((.+)\)", self.marker or "")
        return match.group(1) if match else None


def _snippets() -> list[Snippet]:
    found = []
    for readme in READMES:
        text = readme.read_text()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            marker = match["marker"]
            fields = dict(part.split("=", 1) for part in marker.split()) if marker and "=" in marker else {}
            found.append(Snippet(f"{readme.relative_to(ROOT)}:{line}", match["lang"], match["code"], marker, fields))
    return found


SNIPPETS = _snippets()
GROUPS = sorted({s.fields["group"] for s in SNIPPETS if "group" in s.fields})
FILES = {s.fields["file"]: s for s in SNIPPETS if "file" in s.fields}


def test_every_block_is_run_or_says_why_not() -> None:
    assert len(SNIPPETS) >= 10
    for snippet in SNIPPETS:
        assert snippet.marker, f"{snippet.source}: a code block without a snippet marker"
        if snippet.skip_reason is None:
            assert {"group", "role"} <= set(snippet.fields), f"{snippet.source}: marker {snippet.marker!r}"
            assert snippet.fields["role"] in ("worker", "shell-worker", "run", "pytest", "node"), snippet.source
        else:
            assert snippet.lang != "python", f"{snippet.source}: Python blocks always run"


def test_the_node_command_in_the_readme_is_the_one_the_client_documents() -> None:
    [readme_command] = [s.code.strip() for s in SNIPPETS if s.fields.get("role") == "node"]
    header = (ROOT / "interop" / "node" / "client.js").read_text()
    assert f"//   {readme_command}\n" in header


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[SessiondServer, str]]:
    running, port = await create_server(ServerConfig(listen="127.0.0.1:0"))
    await running.start()
    yield running, f"127.0.0.1:{port}"
    await running.stop(0)


def _env() -> dict[str, str]:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
    env.pop("SESSIOND_ADDRESS", None)
    return env


async def _finish(process: asyncio.subprocess.Process, timeout: float = 120) -> str:
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return out.decode()


def _registered_or_exited(running: SessiondServer, before: int, process: asyncio.subprocess.Process) -> bool:
    return len(running.engine.table.workers()[0]) > before or process.returncode is not None


@activity.defn
async def echo(value: Any) -> Any:
    """The activity the Node command runs."""
    return value


@pytest.mark.asyncio
@pytest.mark.parametrize("group", [
    pytest.param(g, marks=pytest.mark.node) if any(s.fields.get("group") == g and s.fields.get("role") == "node"
                                                   for s in SNIPPETS) else g
    for g in GROUPS])
async def test_the_blocks_of_a_group_run_as_written(group: str, server: tuple[SessiondServer, str],
                                                    tmp_path: Path) -> None:
    running, target = server
    blocks = [s for s in SNIPPETS if s.fields.get("group") == group]
    for name in {u for s in blocks for u in s.fields.get("uses", "").split(",") if u}:
        (tmp_path / name).write_text(FILES[name].code.replace(ADDRESS, target))
    workers: list[tuple[str, asyncio.subprocess.Process]] = []
    in_process: list[tuple[SessionWorker, asyncio.Task[None]]] = []
    try:
        for index, snippet in enumerate(blocks):
            role = snippet.fields["role"]
            code = snippet.code.replace(ADDRESS, target)
            path = tmp_path / snippet.fields.get("file", f"snippet_{index}.py")
            if role in ("worker", "shell-worker"):
                if role == "worker":
                    path.write_text(code)
                    argv = [sys.executable, path.name]
                else:
                    argv = shlex.split(code.strip())
                    assert argv[0] == "sessiond", snippet.source
                    argv = [sys.executable, "-m", "sessiond", *argv[1:]]
                before = len(running.engine.table.workers()[0])
                process = await asyncio.create_subprocess_exec(
                    *argv, cwd=tmp_path, env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                workers.append((snippet.source, process))
                await eventually(functools.partial(_registered_or_exited, running, before, process), timeout=30,
                                 message=f"{snippet.source} registers")
                assert process.returncode is None, f"{snippet.source} exited: {await _finish(process)}"
            elif role == "run":
                path.write_text(code)
                process = await asyncio.create_subprocess_exec(
                    sys.executable, path.name, cwd=tmp_path, env=_env(),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                out = await _finish(process)
                assert process.returncode == 0, f"{snippet.source}:\n{out}"
                assert out.strip(), f"{snippet.source} printed nothing"
            elif role == "pytest":
                test_file = tmp_path / "test_snippet.py"
                test_file.write_text(code)
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file.name, cwd=tmp_path,
                    env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                out = await _finish(process, timeout=300)
                assert process.returncode == 0, f"{snippet.source}:\n{out}"
                assert re.search(r"\b\d+ passed\b", out) and "failed" not in out, out
            else:  # node
                node = shutil.which("node")
                if node is None or not (ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir():
                    if os.environ.get("CI") == "true":
                        pytest.fail("node and node_modules are required under CI")
                    pytest.skip("node or node_modules missing: make node_modules")
                argv = shlex.split(code.strip())
                queue = argv[argv.index("--task-queue") + 1]
                worker = SessionWorker(target, queue, [echo])
                in_process.append((worker, asyncio.create_task(worker.run())))
                await asyncio.wait_for(worker.wait_registered(), 10)
                process = await asyncio.create_subprocess_exec(
                    node, *argv[1:], cwd=ROOT, env=_env(), stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT)
                out = await _finish(process)
                assert process.returncode == 0, out
                seen = json.loads(out)
                value = json.loads(argv[argv.index("--input") + 1])
                assert seen["activity"] == {"type": argv[argv.index("--activity") + 1], "result": value}
                assert seen["state_after_complete"] == "SESSION_STATE_CLOSED"
    finally:
        for worker, task in in_process:
            worker.shutdown(drain=False)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        outputs = []
        for source, process in workers:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)  # the READMEs say: SIGTERM drains and exits
            outputs.append((source, process, await _finish(process, timeout=30)))
    for source, process, out in outputs:
        assert process.returncode == 0, f"{source} did not exit 0 on SIGTERM:\n{out}"
