"""Many worker streams in one process: sessiond workers, or echo stream holders for the baseline.

``--kind sessiond``: each stream is a raw-stub ``WorkerHeartbeat`` worker (the wire protocol only, so
the figures are the server's and not a client library's). It registers, heartbeats at the interval
the server sends in every message (jittered, from one scheduler per process), and answers every
``ActivityTask`` at once with its input as the result (a no-op activity).

``--kind echo``: each stream is an ``EchoStream`` on the echo baseline that sends one small message per
interval (the same traffic a sessiond worker makes when idle).

``--kind echo-worker``: each stream is the echo baseline's ``Work`` stream: it ignores ``Push`` messages and
sends ``Relay`` messages straight back (sessiond's worker pattern on an empty service).

Streams are opened in batches (``--batch``, at most 500 at once); with ``--separate-channels`` each
stream has its own channel and TCP connection (the realistic case: one worker, one process).
Prints ``{"event": "ready", ...}`` when every stream is up, then runs until SIGTERM or SIGKILL.

    python -m bench.worker --target 127.0.0.1:PORT --task-queue q --streams 1000 --separate-channels
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import heapq
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sessiond_client.api.v1 import session_service_pb2_grpc, worker_pb2

from bench.common import ECHO_STREAM, ECHO_WORK, emit

# Idle sessiond workers get this interval from the server (max_heartbeat_interval); echo holders copy it.
DEFAULT_INTERVAL = 10.0
_HEARTBEAT = worker_pb2.WorkerHeartbeatRequest(heartbeat=worker_pb2.Heartbeat())
_PING = b"p" * 16


class Stream:
    """One worker (or echo holder) stream: an outbox queue the request generator drains."""

    __slots__ = ("call", "channel", "index", "interval", "outbox", "reader", "ready")

    def __init__(self, index: int) -> None:
        self.index = index
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.ready = asyncio.Event()
        self.interval = DEFAULT_INTERVAL
        self.channel: grpc.aio.Channel | None = None
        self.call: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def requests(self) -> AsyncIterator[Any]:
        while (message := await self.outbox.get()) is not None:
            yield message


class Heartbeats:
    """One timer heap for every stream of the process: stream i sends at its own (jittered) interval."""

    def __init__(self, message: Any) -> None:
        self._message = message
        self._heap: list[tuple[float, int, Stream]] = []
        self._due: dict[int, float] = {}
        self._wake = asyncio.Event()
        self.sent = 0

    def schedule(self, stream: Stream, first: bool = False) -> None:
        """(Re)arm ``stream``: its next heartbeat is at most one interval away."""
        delay = stream.interval * (random.uniform(0.05, 1.0) if first else random.uniform(0.85, 0.95))
        at = time.monotonic() + delay
        current = self._due.get(stream.index)
        if current is not None and current <= at:
            return
        self._due[stream.index] = at
        heapq.heappush(self._heap, (at, stream.index, stream))
        if self._heap[0][1] == stream.index:
            self._wake.set()

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                at, index, stream = heapq.heappop(self._heap)
                if self._due.get(index) != at:
                    continue  # superseded by an earlier schedule
                del self._due[index]
                stream.outbox.put_nowait(self._message)
                self.sent += 1
                self.schedule(stream)
            self._wake.clear()
            timeout = self._heap[0][0] - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)


class WorkerProcess:
    """All the streams of this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.kind = args.kind
        self.heartbeats = Heartbeats(_HEARTBEAT if self.kind == "sessiond" else _PING)
        self.shared: grpc.aio.Channel | None = None
        self.retries = 0
        self.activities = 0
        self.capacities = {k: int(v) for k, v in (r.split("=", 1) for r in args.resource)}

    def labels(self, index: int) -> dict[str, str]:
        """Stream ``index``'s labels: one of ``--label-sets`` label sets, round robin (none by default)."""
        if not self.args.label_sets:
            return {}
        which = (self.args.label_offset + index) % self.args.label_sets
        return {"zone": f"z{which}", "gpu_model": ("h100", "a100")[which % 2]}

    def _channel(self) -> grpc.aio.Channel:
        if not self.args.separate_channels:
            if self.shared is None:
                self.shared = grpc.aio.insecure_channel(self.args.target)
            return self.shared
        # A local subchannel pool: one TCP connection per channel, as separate worker processes would have.
        return grpc.aio.insecure_channel(self.args.target, options=[("grpc.use_local_subchannel_pool", 1)])

    async def open(self, stream: Stream) -> None:
        """Open the stream; retry (with jitter) until the first answer arrives."""
        for attempt in range(20):
            stream.channel = self._channel()
            if self.kind == "sessiond":
                stub = session_service_pb2_grpc.SessionServiceStub(stream.channel)
                worker_id = f"{self.args.worker_prefix}-{stream.index}"
                stream.outbox.put_nowait(worker_pb2.WorkerHeartbeatRequest(register=worker_pb2.RegisterWorker(
                    task_queue=self.args.task_queue, worker_id=worker_id, identity=f"{os.getpid()}@bench",
                    host_name="bench", max_concurrent_sessions=self.args.capacity,
                    capacities=self.capacities, labels=self.labels(stream.index))))
                metadata = (("authorization", f"Bearer {self.args.token}"),) if self.args.token else None
                stream.call = stub.WorkerHeartbeat(stream.requests(), metadata=metadata)
            elif self.kind == "echo-worker":
                stream.outbox.put_nowait(b"H")
                stream.call = stream.channel.stream_stream(ECHO_WORK)(stream.requests())
            else:
                method = stream.channel.stream_stream(ECHO_STREAM)
                stream.outbox.put_nowait(_PING)
                stream.call = method(stream.requests())
            stream.reader = asyncio.create_task(self._read(stream))
            waiter = asyncio.ensure_future(stream.ready.wait())
            await asyncio.wait({stream.reader, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if stream.ready.is_set():
                self.heartbeats.schedule(stream, first=True)
                return
            self.retries += 1
            stream.reader.cancel()
            if self.args.separate_channels:
                await stream.channel.close()
            stream.outbox = asyncio.Queue()
            await asyncio.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
        raise RuntimeError(f"stream {stream.index} could not be opened")

    async def _read(self, stream: Stream) -> None:
        try:
            async for message in stream.call:
                if self.kind == "echo-worker":
                    if message[:1] == b"R":
                        self.activities += 1
                        stream.outbox.put_nowait(message)
                    elif message[:1] == b"A":
                        stream.ready.set()
                    continue
                if self.kind == "echo":
                    stream.ready.set()
                    continue
                kind = message.WhichOneof("message")
                if kind == "activity_task":
                    task = message.activity_task
                    self.activities += 1
                    stream.outbox.put_nowait(worker_pb2.WorkerHeartbeatRequest(
                        activity_result=worker_pb2.ActivityResult(
                            activity_id=task.activity_id, session_id=task.session_id, result=task.input)))
                elif kind == "registered":
                    stream.ready.set()
                if message.HasField("heartbeat_interval"):
                    interval = message.heartbeat_interval.seconds + message.heartbeat_interval.nanos / 1e9
                    if interval > 0 and interval != stream.interval:
                        stream.interval = interval
                        if stream.ready.is_set():
                            self.heartbeats.schedule(stream)
        except grpc.aio.AioRpcError as exc:
            if stream.ready.is_set():
                emit("stream_ended", index=stream.index, code=exc.code().name)

    async def run(self) -> None:
        started = time.monotonic()
        streams = [Stream(i) for i in range(self.args.streams)]
        beats = asyncio.create_task(self.heartbeats.run())
        for first in range(0, len(streams), self.args.batch):
            await asyncio.gather(*(self.open(s) for s in streams[first:first + self.args.batch]))
        gc.collect()
        gc.freeze()
        emit("ready", pid=os.getpid(), streams=len(streams), open_s=round(time.monotonic() - started, 3),
             retries=self.retries)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        beats.cancel()
        emit("stopped", heartbeats=self.heartbeats.sent, activities=self.activities)
        # Exit without a graceful teardown of thousands of streams: the run is over.
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """Run the streams until SIGTERM."""
    parser = argparse.ArgumentParser(prog="bench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--kind", choices=("sessiond", "echo", "echo-worker"), default="sessiond")
    parser.add_argument("--task-queue", default="bench")
    parser.add_argument("--worker-prefix", default=f"w{os.getpid()}")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--capacity", type=int, default=1000, help="max_concurrent_sessions of each worker")
    parser.add_argument("--token", default="", help="bearer token of the worker streams (sessiond kind)")
    parser.add_argument("--resource", action="append", default=[], metavar="NAME=N",
                        help="a capacity each worker declares besides sessions (repeatable)")
    parser.add_argument("--label-sets", type=int, default=0,
                        help="give the streams this many distinct label sets, round robin (zone=zN, gpu_model)")
    parser.add_argument("--label-offset", type=int, default=0, help="where this process starts in the round robin")
    parser.add_argument("--batch", type=int, default=500, help="streams opened at once (at most 500)")
    parser.add_argument("--separate-channels", action="store_true", help="one channel (TCP connection) per stream")
    args = parser.parse_args(argv)
    args.batch = max(1, min(args.batch, 500))
    asyncio.run(WorkerProcess(args).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
