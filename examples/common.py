"""What the examples' one-command drivers share: a sessiond process on a free port, polling with a
deadline, connecting."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO

from sessiond_client import SessionClient

from sessiond.testing.ports import free_port, listening

__all__ = ["connect", "free_port", "start_sessiond", "until"]

_PORT_ATTEMPTS = 5


class _Relay:
    """Reads a child's stderr on a thread. Until :meth:`release`, lines are kept (a start that lost
    its port says so, and is tried again quietly); after it, they go on to our stderr as they come."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.kept: list[bytes] = []
        self._lock = threading.Lock()
        self._released = False
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        for line in stream:
            with self._lock:
                if not self._released:
                    self.kept.append(line)
                    continue
            sys.stderr.buffer.write(line)
            sys.stderr.flush()

    def release(self) -> None:
        """Pass on what was kept, and every line from now on."""
        with self._lock:
            self._released = True
            for line in self.kept:
                sys.stderr.buffer.write(line)
            sys.stderr.flush()

    def text(self) -> str:
        """Everything kept, once the child has exited (the thread has read its stderr to the end)."""
        self._thread.join(timeout=10)
        return b"".join(self.kept).decode(errors="replace")


# Decided once for the machine: a process that has just exited (a zombie) has no /proc/PID/net, and
# must not fall back to a connect that another program on its port would answer.
_PROC = Path("/proc/self/net/tcp").exists()


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself listens on ``port``. Without /proc (not Linux), whether
    something answers on the port — the best a portable check can do."""
    if _PROC:
        return listening(pid, port)
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_sessiond(*flags: str, env: Mapping[str, str], cwd: Path,
                   timeout: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m sessiond serve --listen 127.0.0.1:<free port> FLAGS``; returns the process and
    its host:port once that process itself listens there. The port was only free a moment ago
    (other programs bind ports too): when the server exits saying it is in use, it starts again on
    a new one. Its stderr goes on to ours."""
    for _ in range(_PORT_ATTEMPTS):
        port = free_port()
        target = f"127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "sessiond", "serve", "--listen", target, *flags],
                                env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        assert proc.stderr is not None
        relay = _Relay(proc.stderr)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not _listens(proc.pid, port):
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                relay.release()
                raise SystemExit(f"sessiond did not listen on {target} within {timeout:.0f} s")
            time.sleep(0.05)
        if proc.returncode is None:
            relay.release()
            return proc, target
        if proc.returncode == 2 and any(says in relay.text() for says in ("is in use", "could not bind")):
            continue
        relay.release()
        raise SystemExit(f"sessiond exited early ({proc.returncode})")
    raise SystemExit(f"sessiond found its port taken {_PORT_ATTEMPTS} times")


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Poll ``check`` until it is true; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def connect(target: str) -> SessionClient:
    """A client of the server at ``target`` (started by :func:`start_sessiond`, so it is ours),
    once it answers."""
    async def up() -> bool:
        try:
            client = await SessionClient.connect(target, default_rpc_timeout=1.0)
        except Exception:
            return False
        await client.close()
        return True

    await until("sessiond to start", up)
    return await SessionClient.connect(target)
