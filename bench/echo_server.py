"""The baseline: an empty grpc.aio ``echo.v1.Echo`` service, run as its own process.

``Echo`` (unary) and ``EchoStream`` (bidi, async generator) return what they get. ``Notify``
(server stream) sends one message each time an ``EchoStream`` ends: the fastest any grpc.aio
service can tell a caller that a peer's stream died (the baseline of the kill -9 scenario).
Bytes in, bytes out (no serializers), the same grpc core options as sessiond, ``gc.freeze()`` after
start-up as ``sessiond serve`` does.

    python -m bench.echo_server --port 0     # prints {"event": "ready", "port": N, "pid": P}
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bench.common import ECHO_SERVICE, SERVER_OPTIONS, emit

_subscribers: set[asyncio.Queue[bytes]] = set()


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _echo_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    try:
        async for message in requests:
            yield message
    finally:
        for queue in _subscribers:
            queue.put_nowait(b"ended")


async def _notify(request: bytes, context: Any) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    _subscribers.add(queue)
    try:
        yield b"subscribed"
        while True:
            yield await queue.get()
    finally:
        _subscribers.discard(queue)


async def _serve(port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "EchoStream": grpc.stream_stream_rpc_method_handler(_echo_stream),
        "Notify": grpc.unary_stream_rpc_method_handler(_notify),
    }),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emit("ready", port=bound, pid=os.getpid())
    await stop.wait()
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    """Run the echo server until SIGTERM."""
    parser = argparse.ArgumentParser(prog="bench.echo_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_serve(parser.parse_args(argv).port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
