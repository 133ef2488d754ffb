"""Real faults for the integration tier: a sessiond server *process*, to SIGSTOP it and read its
RSS from /proc. (The loopback TCP proxy that partitions a peer is ``tests.support.tcp_proxy``.)

Driven from the test's event loop; nothing here sleeps to synchronise (callers poll with
:func:`tests.integration.conftest.eventually`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import REPO_ROOT, eventually

ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def not_serving(target: str) -> bool:
    """Whether the server at ``target`` reports NOT_SERVING (it is stopping, or draining first)."""
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (VmRSS, in KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class ServerProcess:
    """``python -m sessiond serve`` on a free port, as a separate OS process (``module``: another
    entry point that takes the same arguments, e.g. one that injects a fault first)."""

    def __init__(self, *flags: str, module: str = "sessiond") -> None:
        self.port = free_port()
        self.flags = flags
        self.module = module
        self.process: asyncio.subprocess.Process | None = None
        self._log = b""

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None
        return self.process.pid

    async def start(self) -> ServerProcess:
        """Start the server and wait until it answers health checks."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, "serve", "--listen", self.target, *self.flags,
            cwd=REPO_ROOT, env=ENV, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        await eventually(self._serving, timeout=30, interval=0.1, message=f"sessiond on {self.target} serving")
        return self

    async def _serving(self) -> bool:
        assert self.process is not None
        if self.process.returncode is not None:
            raise AssertionError(f"sessiond exited early ({self.process.returncode})")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.close()
            return True
        return False

    def signal(self, sig: int) -> None:
        """Send a signal (SIGSTOP, SIGCONT, SIGTERM, ...)."""
        assert self.process is not None
        self.process.send_signal(sig)

    def rss_kb(self) -> int:
        """The server's resident set size in KiB."""
        return rss_kb(self.pid)

    async def stop(self) -> str:
        """SIGCONT (in case it is stopped), SIGKILL, and return what it wrote on stderr."""
        if self.process is None:
            return ""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.kill()
        _, err = await self.process.communicate()
        return err.decode(errors="replace")
