"""Load generators: one fresh process per measurement block, started by the orchestrator.

``run``     timed phases against one server, each ``mode:in_flight`` with its own warm-up and window:
            ``unary`` / ``pingpong`` (the echo baseline), ``push`` (two echo Push calls: sessiond's create +
            complete message pattern on an empty service), ``relay`` (an echo Relay: the activity pattern),
            ``cc`` (CreateSession + CompleteSession) and ``activity`` (ExecuteActivity of a no-op activity,
            one session per in-flight lane).
            A call counts when it completes inside the window; its latency is taken around the await
            (so it includes client-side queueing). Server CPU is read from /proc over the same window.
``fill``    opens COUNT sessions (and leaves them open), for the memory-per-session figure.
``detect``  time from a signal to a worker process until the caller learns of it: sessiond's
            ``WatchSession`` FAILED, or the echo baseline's ``Notify``. The signal and the answer are
            timestamped with ``time.monotonic`` in this one process.

Each command prints one ``{"event": "result", ...}`` JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from bench.common import (
    ECHO_NOTIFY,
    ECHO_PUSH,
    ECHO_RELAY,
    ECHO_STREAM,
    ECHO_UNARY,
    PAYLOAD_BYTES,
    cpu_seconds,
    emit,
)
from bench.stats import latency_summary

PAYLOAD = b"x" * PAYLOAD_BYTES
MAX_ERRORS = 500


class Window:
    """The measured interval of one phase, after its warm-up."""

    def __init__(self, warmup: float, duration: float) -> None:
        self.start = time.perf_counter() + warmup
        self.end = self.start + duration
        self.duration = duration

    def counts(self, finished: float) -> bool:
        return self.start <= finished <= self.end


class Recorder:
    """Latencies (seconds) of the calls that finished inside the window, and errors."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.latencies: list[float] = []
        self.parts: list[list[float]] = []
        self.errors: dict[str, int] = {}

    def error(self, exc: BaseException) -> None:
        code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
        self.errors[code] = self.errors.get(code, 0) + 1
        if sum(self.errors.values()) > MAX_ERRORS:
            raise RuntimeError(f"too many errors: {self.errors}") from exc


Op = Callable[[], Awaitable[tuple[float, ...]]]


async def _lane(op: Op, rec: Recorder) -> None:
    window = rec.window
    while True:
        started = time.perf_counter()
        if started >= window.end:
            return
        try:
            parts = await op()
        except grpc.aio.AioRpcError as exc:
            rec.error(exc)
            continue
        finished = time.perf_counter()
        if window.counts(finished):
            rec.latencies.append(finished - started)
            for i, part in enumerate(parts):
                while len(rec.parts) <= i:
                    rec.parts.append([])
                rec.parts[i].append(part)


async def _cpu_window(window: Window, pids: dict[str, int]) -> dict[str, float | None]:
    """CPU cores used by each process over the window (CPU seconds per wall second)."""
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    out: dict[str, float | None] = {}
    for name, pid in pids.items():
        after = cpu_seconds(pid)
        start = before[name]
        out[name] = None if after is None or start is None else round((after - start) / elapsed, 3)
    return out


async def _measure(name: str, lanes: list[Op], warmup: float, duration: float,
                   pids: dict[str, int]) -> dict[str, Any]:
    window = Window(warmup, duration)
    rec = Recorder(window)
    cpu_task = asyncio.create_task(_cpu_window(window, pids))
    await asyncio.gather(*(_lane(op, rec) for op in lanes))
    cpu = await cpu_task
    ops = len(rec.latencies)
    rate = ops / duration
    result: dict[str, Any] = {
        "phase": name, "in_flight": len(lanes), "ops": ops, "seconds": duration, "ops_per_s": round(rate, 1),
        **latency_summary(rec.latencies), "errors": rec.errors, "cpu_cores": cpu,
    }
    server = cpu.get("server")
    if server is not None and rate > 0:
        result["server_us_per_op"] = round(server / rate * 1e6, 1)
    for i, part in enumerate(rec.parts):
        result[f"part{i}"] = latency_summary(part)
    return result


# --------------------------------------------------------------------- run: timed phases


def _seconds(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(value * 1e9))
    return out


async def _phase(channel: grpc.aio.Channel, mode: str, n: int, args: argparse.Namespace,
                 pids: dict[str, int]) -> dict[str, Any]:
    stub = session_service_pb2_grpc.SessionServiceStub(channel)
    if mode == "unary":
        echo = channel.unary_unary(ECHO_UNARY)

        async def unary() -> tuple[float, ...]:
            await echo(PAYLOAD)
            return ()

        return await _measure(f"unary:{n}", [unary] * n, args.warmup, args.duration, pids)
    if mode == "push":
        push = channel.unary_unary(ECHO_PUSH)

        async def push_pair() -> tuple[float, ...]:
            await push(PAYLOAD)
            await push(PAYLOAD)
            return ()

        return await _measure(f"push:{n}", [push_pair] * n, args.warmup, args.duration, pids)
    if mode == "relay":
        relay = channel.unary_unary(ECHO_RELAY)

        async def relayed() -> tuple[float, ...]:
            await relay(PAYLOAD)
            return ()

        return await _measure(f"relay:{n}", [relayed] * n, args.warmup, args.duration, pids)
    if mode == "pingpong":
        calls = [channel.stream_stream(ECHO_STREAM)() for _ in range(n)]

        def pinger(call: Any) -> Op:
            async def ping() -> tuple[float, ...]:
                await call.write(PAYLOAD)
                await call.read()
                return ()
            return ping

        try:
            return await _measure(f"pingpong:{n}", [pinger(c) for c in calls], args.warmup, args.duration, pids)
        finally:
            for call in calls:
                await call.done_writing()
                call.cancel()
    if mode == "cc":
        create = session_service_pb2.CreateSessionRequest(task_queue=args.task_queue)
        if args.resource or args.selector:
            create.options.resources.update({k: int(v) for k, v in (r.split("=", 1) for r in args.resource)})
            create.options.selector = args.selector

        metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None

        async def pair() -> tuple[float, ...]:
            t0 = time.perf_counter()
            created = await stub.CreateSession(create, metadata=metadata)
            t1 = time.perf_counter()
            complete = session_service_pb2.CompleteSessionRequest(session_id=created.session.session_id)
            await stub.CompleteSession(complete, metadata=metadata)
            return (t1 - t0,)

        result = await _measure(f"cc:{n}", [pair] * n, args.warmup, args.duration, pids)
        result["create"] = result.pop("part0", None)
        return result
    if mode == "activity":
        sessions = [(await stub.CreateSession(session_service_pb2.CreateSessionRequest(task_queue=args.task_queue)))
                    .session.session_id for _ in range(n)]
        payload = session_pb2.Payload(data=PAYLOAD)

        def runner(session_id: str) -> Op:
            request = session_service_pb2.ExecuteActivityRequest(session_id=session_id, activity_type="noop",
                                                                 input=payload)

            async def execute() -> tuple[float, ...]:
                await stub.ExecuteActivity(request)
                return ()
            return execute

        try:
            return await _measure(f"activity:{n}", [runner(s) for s in sessions], args.warmup, args.duration, pids)
        finally:
            for session_id in sessions:
                await stub.CompleteSession(session_service_pb2.CompleteSessionRequest(session_id=session_id))
    raise ValueError(f"unknown mode {mode!r}")


async def _run(args: argparse.Namespace) -> None:
    pids = {"client": os.getpid()}
    if args.server_pid:
        pids["server"] = args.server_pid
    if args.worker_pid:
        pids["worker"] = args.worker_pid
    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        gc.collect()
        gc.freeze()
        phases = []
        for spec in args.phases.split(","):
            mode, _, n = spec.partition(":")
            phases.append(await _phase(channel, mode, int(n or 1), args, pids))
        emit("result", phases=phases)


# --------------------------------------------------------------------- fill


async def _fill(args: argparse.Namespace) -> None:
    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        request = session_service_pb2.CreateSessionRequest(task_queue=args.task_queue)
        remaining = [args.count]
        errors: dict[str, int] = {}

        async def lane() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                try:
                    await stub.CreateSession(request)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    if sum(errors.values()) > MAX_ERRORS:
                        raise
                    remaining[0] += 1

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
        emit("result", count=args.count, seconds=round(elapsed, 3), per_s=round(args.count / elapsed, 1),
             errors=errors)


# --------------------------------------------------------------------- detect


async def _detect_sessiond(args: argparse.Namespace, targets: list[tuple[int, str]], sig: int) -> list[dict[str, Any]]:
    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        options = session_pb2.SessionOptions()
        if args.heartbeat_timeout:
            options.heartbeat_timeout.CopyFrom(_seconds(args.heartbeat_timeout))

        async def one(delay: float, pid: int, queue: str) -> dict[str, Any]:
            await asyncio.sleep(delay)
            created = await stub.CreateSession(session_service_pb2.CreateSessionRequest(
                task_queue=queue, options=options))
            watch = stub.WatchSession(session_service_pb2.WatchSessionRequest(session_id=created.session.session_id))
            first = await watch.read()
            assert first.session.state == session_pb2.SESSION_STATE_OPEN, first
            # A random settle time, so the signal lands at a random phase of the worker's heartbeat.
            await asyncio.sleep(random.uniform(args.settle, 2 * args.settle))
            sent = time.monotonic()
            os.kill(pid, sig)
            try:
                answer = await asyncio.wait_for(watch.read(), args.answer_timeout)
            except TimeoutError:
                answer = None
            seen = time.monotonic()
            if sig != signal.SIGKILL:
                os.kill(pid, signal.SIGKILL)
            watch.cancel()
            if answer is None or answer is grpc.aio.EOF:
                return {"pid": pid, "ms": None, "state": "TIMEOUT" if answer is None else "EOF", "cause": ""}
            return {
                "pid": pid, "ms": round((seen - sent) * 1e3, 3),
                "state": session_pb2.SessionState.Name(answer.session.state),
                "cause": session_pb2.FailureCause.Name(answer.session.failure.cause),
            }

        if args.stagger > 0:
            return list(await asyncio.gather(*(one(i * args.stagger, pid, q) for i, (pid, q) in enumerate(targets))))
        return [await one(0.0, pid, q) for pid, q in targets]


async def _detect_echo(args: argparse.Namespace, targets: list[tuple[int, str]], sig: int) -> list[dict[str, Any]]:
    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        notify = channel.unary_stream(ECHO_NOTIFY)(b"")
        await notify.read()  # subscribed
        out = []
        for pid, _ in targets:
            await asyncio.sleep(random.uniform(args.settle, 2 * args.settle))
            sent = time.monotonic()
            os.kill(pid, sig)
            try:
                await asyncio.wait_for(notify.read(), args.answer_timeout)
                seen: float | None = time.monotonic()
            except TimeoutError:
                seen = None
            if sig != signal.SIGKILL:
                os.kill(pid, signal.SIGKILL)
            if seen is None:
                out.append({"pid": pid, "ms": None, "state": "TIMEOUT", "cause": ""})
                break  # the stream's end is now queued on Notify: later samples would be off by one
            out.append({"pid": pid, "ms": round((seen - sent) * 1e3, 3), "state": "ENDED", "cause": ""})
        notify.cancel()
        return out


async def _detect(args: argparse.Namespace) -> None:
    pids = [int(p) for p in args.pids.split(",")]
    queues = args.queues.split(",") if args.queues else [""] * len(pids)
    sig = signal.SIGKILL if args.signal == "KILL" else signal.SIGSTOP
    gc.collect()
    gc.freeze()
    detector = _detect_echo if args.system == "echo" else _detect_sessiond
    emit("result", samples=await detector(args, list(zip(pids, queues, strict=True)), sig))


# --------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """Run one load-generator command."""
    parser = argparse.ArgumentParser(prog="bench.loadgen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="timed phases")
    run.add_argument("--phases", required=True, help="comma-separated mode:in_flight (unary, pingpong, cc, activity)")
    run.add_argument("--warmup", type=float, default=1.0)
    run.add_argument("--duration", type=float, default=4.0)
    run.add_argument("--server-pid", type=int, default=0)
    run.add_argument("--worker-pid", type=int, default=0)
    run.add_argument("--token", default="", help="bearer token sent with each cc call (the auth scenario)")
    run.add_argument("--resource", action="append", default=[], metavar="NAME=N",
                     help="cc: what each CreateSession asks for besides its session (repeatable)")
    run.add_argument("--selector", default="", help="cc: the label selector of each CreateSession")
    fill = sub.add_parser("fill", help="open COUNT sessions and leave them open")
    fill.add_argument("--count", type=int, required=True)
    fill.add_argument("--concurrency", type=int, default=64)
    detect = sub.add_parser("detect", help="signal worker processes, time the caller's notification")
    detect.add_argument("--system", choices=("sessiond", "echo"), default="sessiond")
    detect.add_argument("--signal", choices=("KILL", "STOP"), default="KILL")
    detect.add_argument("--pids", required=True)
    detect.add_argument("--queues", default="", help="task queue of each pid's worker (sessiond)")
    detect.add_argument("--heartbeat-timeout", type=float, default=0.0)
    detect.add_argument("--settle", type=float, default=0.1, help="wait a random settle..2*settle s before the signal")
    detect.add_argument("--answer-timeout", type=float, default=30.0, help="give up waiting after this many s")
    detect.add_argument("--stagger", type=float, default=0.0, help="run the targets concurrently, this far apart")
    for p in (run, fill, detect):
        p.add_argument("--target", required=True)
        p.add_argument("--task-queue", default="bench")
    args = parser.parse_args(argv)
    command = {"run": _run, "fill": _fill, "detect": _detect}[args.command]
    asyncio.run(command(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
