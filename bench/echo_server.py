"""The baseline: an empty grpc.aio ``echo.v1.Echo`` service, run as its own process.

``Echo`` (unary) and ``EchoStream`` (bidi, async generator) return what they get. ``Notify``
(server stream) sends one message each time an ``EchoStream`` ends: the fastest any grpc.aio
service can tell a caller that a peer's stream died (the baseline of the kill -9 scenario).

Two more methods copy sessiond's message pattern with no logic at all, to give the floor any
grpc.aio implementation of that protocol can reach on this machine. A "worker" holds the bidi
``Work`` stream (a reader task plus a queue-fed async generator, as sessiond's ``WorkerHeartbeat``).
``Push`` (unary) echoes and also sends one message down that stream, as ``CreateSession`` sends
``SessionStarted`` (and ``CompleteSession`` sends ``SessionEnded``). ``Relay`` (unary) sends the request
down the stream and answers with what the worker sends back, as ``ExecuteActivity`` does.
Bytes in, bytes out (no serializers), the same grpc core options as sessiond, ``gc.freeze()`` after
start-up as ``sessiond serve`` does.

    python -m bench.echo_server --port 0     # prints {"event": "ready", "port": N, "pid": P}
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bench.common import ECHO_SERVICE, SERVER_OPTIONS, emit

_subscribers: set[asyncio.Queue[bytes]] = set()
_workers: list[asyncio.Queue[bytes]] = []
_pending: dict[int, asyncio.Future[bytes]] = {}
_ids = itertools.count()


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


async def _work(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    """A worker's stream: b"A" first (registered), then whatever Push and Relay queue for it."""
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    reader = asyncio.create_task(_read_replies(requests))
    _workers.append(outbox)
    try:
        yield b"A"
        while True:
            yield await outbox.get()
    finally:
        _workers.remove(outbox)
        reader.cancel()


async def _read_replies(requests: AsyncIterator[bytes]) -> None:
    async for message in requests:
        if message[:1] == b"R":
            future = _pending.pop(int.from_bytes(message[1:9], "big"), None)
            if future is not None and not future.done():
                future.set_result(message[9:])


async def _push(request: bytes, context: Any) -> bytes:
    _workers[0].put_nowait(b"P" + request)
    return request


async def _relay(request: bytes, context: Any) -> bytes:
    key = next(_ids)
    future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    _pending[key] = future
    _workers[0].put_nowait(b"R" + key.to_bytes(8, "big") + request)
    try:
        return await future
    finally:
        _pending.pop(key, None)


async def _serve(port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "EchoStream": grpc.stream_stream_rpc_method_handler(_echo_stream),
        "Notify": grpc.unary_stream_rpc_method_handler(_notify),
        "Work": grpc.stream_stream_rpc_method_handler(_work),
        "Push": grpc.unary_unary_rpc_method_handler(_push),
        "Relay": grpc.unary_unary_rpc_method_handler(_relay),
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
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_serve(args.port))
    else:
        asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
