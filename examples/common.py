"""What the examples' one-command drivers share: a free port, polling with a deadline, connecting."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from sessiond_client import SessionClient


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Poll ``check`` until it is true; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def connect(target: str) -> SessionClient:
    """A client, once the server at ``target`` (just started) answers."""
    async def up() -> bool:
        try:
            client = await SessionClient.connect(target, default_rpc_timeout=1.0)
        except Exception:
            return False
        await client.close()
        return True

    await until("sessiond to start", up)
    return await SessionClient.connect(target)
