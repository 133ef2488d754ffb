"""The caller side of the outlive scenarios: create sessions, hold one as a caller, watch recovery.

    python -m bench.outlive_probe create --target T --task-queue q --n 1000 [--reattach 30]
    python -m bench.outlive_probe wait-open --target T --task-queue q --ids-file F --since WALL [--attached]
    python -m bench.outlive_probe hold --target T --task-queue q --caller-timeout 5
    python -m bench.outlive_probe freed --target T --task-queue q --session ID --since WALL --wait 20

Each prints one ``{"event": "result", ...}`` line (``hold`` prints ``ready`` and waits to be killed).
Times are wall-clock seconds (``time.time()``), so the orchestrator's signal and the probe's
observation share one clock across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2
from sessiond_client import SessionClient
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from bench.common import emit


def _seconds(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(value * 1e9))
    return out


async def create(args: argparse.Namespace) -> None:
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        options = session_pb2.SessionOptions(creation_timeout=_seconds(30))
        if args.reattach:
            options.reattach_timeout.CopyFrom(_seconds(args.reattach))
        ids: list[str] = []
        for first in range(0, args.n, 50):
            replies = await asyncio.gather(*(
                stub.CreateSession(session_service_pb2.CreateSessionRequest(
                    task_queue=args.task_queue, options=options, owner=f"owner-{i}"), timeout=60)
                for i in range(first, min(args.n, first + 50))))
            ids += [r.session.session_id for r in replies]
    emit("result", ids=ids)


async def _open_sessions(stub: session_service_pb2_grpc.SessionServiceStub, queue: str) -> list[session_pb2.Session]:
    out: list[session_pb2.Session] = []
    token = ""
    while True:
        reply = await stub.ListSessions(session_service_pb2.ListSessionsRequest(
            task_queue=queue, state=session_pb2.SESSION_STATE_OPEN, page_size=1000, page_token=token), timeout=5)
        out.extend(reply.sessions)
        token = reply.next_page_token
        if not token:
            return out


async def wait_open(args: argparse.Namespace) -> None:
    """Poll the operator's list until every id is OPEN (and attached, with --attached) again."""
    wanted = set(args.ids)
    seen: dict[str, float] = {}
    deadline = time.monotonic() + args.timeout
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        emit("ready")
        # Started before the restart: only what is seen after --since counts (until then the
        # sessions are still OPEN on the old server, or detached on the server that stayed up).
        await asyncio.sleep(max(0.0, args.since - time.time()))
        while len(seen) < len(wanted) and time.monotonic() < deadline:
            try:
                sessions = await _open_sessions(stub, args.task_queue)
            except grpc.aio.AioRpcError:
                sessions = []  # the server is still starting
            now = time.time()
            for s in sessions:
                if s.session_id in wanted and s.session_id not in seen and not (
                        args.attached and s.HasField("detached_since")):
                    seen[s.session_id] = now
            await asyncio.sleep(0.02)
    emit("result", seen_at=sorted(seen.values()), missing=len(wanted) - len(seen), n=len(wanted))


async def hold(args: argparse.Namespace) -> None:
    async with await SessionClient.connect(args.target) as client:
        async with client.create_session(args.task_queue, creation_timeout=30,
                                         caller_timeout=args.caller_timeout) as session:
            emit("ready", session_id=session.id)
            await asyncio.Event().wait()


async def freed(args: argparse.Namespace) -> None:
    """After the holder was killed: when did its session fail, and when did the next create land?"""
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        options = session_pb2.SessionOptions(creation_timeout=_seconds(args.wait))
        placed = asyncio.ensure_future(stub.CreateSession(
            session_service_pb2.CreateSessionRequest(task_queue=args.task_queue, options=options),
            timeout=args.wait + 5))
        failed: dict[str, Any] = {}
        while not failed:
            for s in await _all(stub, args.task_queue):
                if s.session_id == args.session and s.state == session_pb2.SESSION_STATE_FAILED:
                    failed = {"failed_s": time.time() - args.since,
                              "cause": session_pb2.FailureCause.Name(s.failure.cause)}
            await asyncio.sleep(0.01)
        await placed
        placed_s = time.time() - args.since
    emit("result", placed_s=placed_s, **failed)


async def _all(stub: session_service_pb2_grpc.SessionServiceStub, queue: str) -> list[session_pb2.Session]:
    reply = await stub.ListSessions(session_service_pb2.ListSessionsRequest(task_queue=queue, page_size=1000),
                                    timeout=5)
    return list(reply.sessions)


def main(argv: list[str] | None = None) -> int:
    """Run one probe command."""
    parser = argparse.ArgumentParser(prog="bench.outlive_probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("create", "wait-open", "hold", "freed"):
        p = sub.add_parser(name)
        p.add_argument("--target", required=True)
        p.add_argument("--task-queue", default="bench")
    sub.choices["create"].add_argument("--n", type=int, required=True)
    sub.choices["create"].add_argument("--reattach", type=float, default=0.0)
    sub.choices["wait-open"].add_argument("--ids-file", required=True)
    sub.choices["wait-open"].add_argument("--since", type=float, required=True)
    sub.choices["wait-open"].add_argument("--timeout", type=float, default=60.0)
    sub.choices["wait-open"].add_argument("--attached", action="store_true")
    sub.choices["hold"].add_argument("--caller-timeout", type=float, required=True)
    sub.choices["freed"].add_argument("--session", required=True)
    sub.choices["freed"].add_argument("--since", type=float, required=True)
    sub.choices["freed"].add_argument("--wait", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.command == "wait-open":
        args.ids = json.loads(Path(args.ids_file).read_text())
    command = {"create": create, "wait-open": wait_open, "hold": hold, "freed": freed}[args.command]
    asyncio.run(command(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
