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
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessiond.testing.ports import free_port, listening
from tests.integration.conftest import REPO_ROOT, eventually

__all__ = ["ENV", "ServerProcess", "rss_kb"]

ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}


_PORT_ATTEMPTS = 5
# How sessiond says another program has its port: its own probe, gRPC's bind just after the probe
# (the same race, narrower), the dashboard's bind.
_PORT_TAKEN = ("is in use", "gRPC could not bind it", "Address already in use")


class _PortTaken(Exception):
    """The server exited because another program listens on its port."""


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
    entry point that takes the same arguments, e.g. one that injects a fault first).

    ``env``: extra environment variables. ``ui``: also serve the dashboard on a free port of its
    own, named by ``SESSIOND_UI_LISTEN`` (read ``ui_port`` after ``start``)."""

    def __init__(self, *flags: str, module: str = "sessiond", env: Mapping[str, str] | None = None,
                 ui: bool = False) -> None:
        self.port = free_port()
        self.ui_port = free_port() if ui else None
        self.flags = flags
        self.module = module
        self.env = {**ENV, **(env or {})}
        self.process: asyncio.subprocess.Process | None = None
        self._log = bytearray()
        self._reader: asyncio.Task[None] | None = None

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
        """Start the server and wait until it listens on its port. Its stderr is read as it comes
        (a pipe left unread fills up and blocks the server). If another program took the port
        first (it was only free a moment ago), start again on a new one: read ``port``/``target``
        after ``start``."""
        for _ in range(_PORT_ATTEMPTS):
            env = self.env if self.ui_port is None else {**self.env, "SESSIOND_UI_LISTEN": f"127.0.0.1:{self.ui_port}"}
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, "serve", "--listen", self.target, *self.flags,
                cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            self._log = bytearray()
            self._reader = asyncio.create_task(self._read_stderr(self.process))
            try:
                await eventually(self._serving, timeout=30, interval=0.1,
                                 message=f"sessiond on {self.target} serving")
                return self
            except _PortTaken:
                self.port = free_port()
                self.ui_port = free_port() if self.ui_port is not None else None
        raise AssertionError(f"sessiond found its port taken {_PORT_ATTEMPTS} times")

    async def _read_stderr(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        while chunk := await process.stderr.read(65536):
            self._log += chunk

    async def _serving(self) -> bool:
        assert self.process is not None
        if self.process.returncode is not None:
            log = await self._stderr()
            if self.process.returncode == 2 and any(says in log for says in _PORT_TAKEN):
                raise _PortTaken(log)
            raise AssertionError(f"sessiond exited early ({self.process.returncode}): {log}")
        # Our process listening, not merely something answering on the port.
        return listening(self.process.pid, self.port) and (
            self.ui_port is None or listening(self.process.pid, self.ui_port))

    @property
    def lines(self) -> list[str]:
        """The whole lines the server has written on stderr so far (not a partial last one)."""
        return self._log[:self._log.rfind(b"\n") + 1].decode(errors="replace").splitlines()

    async def wait(self) -> tuple[int, str]:
        """Wait for the server to exit (after a signal, say); its exit code and all of its stderr."""
        assert self.process is not None
        code = await self.process.wait()
        return code, await self._stderr()

    async def _stderr(self) -> str:
        """Everything the (exited) process wrote on stderr."""
        if self._reader is not None:
            await self._reader
        return self._log.decode(errors="replace")

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
        await self.process.wait()
        return await self._stderr()
