"""Fixtures of the interop tier: the integration tier's live server and raw workers, and a helper to
run a foreign-language client as a subprocess (always reaped).

The server and in-process workers run on the test's event loop; clients run as separate processes
(``asyncio.create_subprocess_exec``), so the loop keeps serving while they talk to it, and so a
client can prove it needs nothing from this process (no generated stubs, no descriptor pool).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any

# The integration fixtures, shared rather than copied: a server on port 0 and raw-stub workers.
from tests.integration.conftest import REPO_ROOT, make_server, make_worker, sessiond

__all__ = ["REPO_ROOT", "Finished", "make_server", "make_worker", "run_client", "sessiond"]


@dataclass
class Finished:
    """A client process that ran to its end."""

    code: int
    out: str
    err: str

    def json_line(self) -> dict[str, Any]:
        """The one JSON line the client printed on stdout."""
        lines = self.out.splitlines()
        assert len(lines) == 1, f"expected one JSON line, got {self.out!r} (stderr {self.err!r})"
        value = json.loads(lines[0])
        assert isinstance(value, dict)
        return value

    def error(self) -> dict[str, Any]:
        """The JSON error object the client printed on stderr."""
        value = json.loads(self.err.strip().splitlines()[-1])
        assert isinstance(value, dict) and "error" in value, self.err
        return value["error"]  # type: ignore[no-any-return]


async def run_client(*argv: str, timeout: float = 60.0) -> Finished:
    """Run a client command to its end with GRPC_VERBOSITY=ERROR; kill and reap it on timeout or error."""
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
    env.pop("SESSIOND_CALLER_TOKEN", None)
    env.pop("SESSIOND_ADDRESS", None)
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO_ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())
