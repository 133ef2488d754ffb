"""Fixtures and helpers of the integration tier: a real grpc.aio server on port 0 per test,
raw-stub workers in-process or as separate OS processes, and rich-error parsing.

Every fixture here is function-scoped and runs on the test's own event loop (pytest-asyncio
strict mode, default function loop): grpc.aio objects must be created inside the loop that uses
them. A server costs milliseconds to start. Synchronise with :func:`eventually` (poll with a
deadline), never with a bare sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from sessiond_client import SessionClient
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from sessiond.config import ServerConfig
from sessiond.server import SessiondServer, create_server
from sessiond.telemetry import SessionMetrics, configure_metrics
from tests.integration.rawworker import RawWorker
from tests.integration.workers.support import ClientWorkerProcess, worker_pool
from tests.support.event_process import EventProcess

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

REPO_ROOT = Path(__file__).resolve().parents[2]
QUEUE = "q"
OPEN = session_pb2.SESSION_STATE_OPEN
FAILED = session_pb2.SESSION_STATE_FAILED
CLOSED = session_pb2.SESSION_STATE_CLOSED


# --------------------------------------------------------------------- helpers


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01,  # noqa: ASYNC109, RUF100
                     message: str = "") -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that.

    Raises AssertionError after ``timeout`` seconds. This is the only way tests here wait for
    something to happen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {message or predicate}")
        await asyncio.sleep(interval)


def seconds(value: float) -> duration_pb2.Duration:
    """A Duration of ``value`` seconds (negative allowed, to build bad requests)."""
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=value))
    return out


def options(*, creation: float | None = None, execution: float | None = None,
            heartbeat: float | None = None) -> session_pb2.SessionOptions:
    """SessionOptions with only the given fields set (the rest take the server defaults)."""
    out = session_pb2.SessionOptions()
    if creation is not None:
        out.creation_timeout.CopyFrom(seconds(creation))
    if execution is not None:
        out.execution_timeout.CopyFrom(seconds(execution))
    if heartbeat is not None:
        out.heartbeat_timeout.CopyFrom(seconds(heartbeat))
    return out


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ``google.rpc.ErrorInfo`` in an error's ``grpc-status-details-bin`` trailer, if any."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        assert status.code == error.code().value[0], "rich status code differs from the RPC's code"
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
    return None


async def rpc_error(call: Awaitable[Any], code: grpc.StatusCode,
                    reason: str | None = None) -> tuple[grpc.aio.AioRpcError, error_details_pb2.ErrorInfo]:
    """Await ``call``, expect it to fail with ``code`` and an ErrorInfo (with ``reason``, when given)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
    info = error_info(error)
    assert info is not None, f"{code.name} without an ErrorInfo detail: {error.details()}"
    assert info.domain == "sessiond"
    if reason is not None:
        assert info.reason == reason, f"expected reason {reason}, got {info.reason}: {error.details()}"
    return error, info


# --------------------------------------------------------------------- server


@dataclass
class Sessiond:
    """A running server and a channel to it."""

    server: SessiondServer
    port: int
    channel: grpc.aio.Channel
    stub: session_service_pb2_grpc.SessionServiceStub

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.port}"

    @property
    def waiting(self) -> int:
        """Creates and Recreates waiting for capacity (no RPC shows waiters; read the table)."""
        return self.server.engine.table.waiting_count()

    async def create(self, task_queue: str = QUEUE, *, timeout: float | None = 30.0,  # noqa: ASYNC109, RUF100
                     **fields: Any) -> session_pb2.Session:
        """CreateSession; returns the session."""
        reply = await self.stub.CreateSession(
            session_service_pb2.CreateSessionRequest(task_queue=task_queue, **fields), timeout=timeout)
        return reply.session

    async def recreate(self, token: bytes, **fields: Any) -> session_pb2.Session:
        """RecreateSession; returns the session."""
        reply = await self.stub.RecreateSession(
            session_service_pb2.RecreateSessionRequest(recreate_token=token, **fields), timeout=30)
        return reply.session

    async def get(self, session_id: str) -> session_pb2.Session:
        """GetSessionInfo; returns the session."""
        reply = await self.stub.GetSessionInfo(session_service_pb2.GetSessionInfoRequest(session_id=session_id))
        return reply.session

    async def complete(self, session_id: str) -> session_pb2.Session:
        """CompleteSession; returns the session."""
        reply = await self.stub.CompleteSession(session_service_pb2.CompleteSessionRequest(session_id=session_id))
        return reply.session

    async def execute(self, session_id: str, activity_type: str, value: Any = None, *,
                      start_to_close: float | None = None) -> session_service_pb2.ExecuteActivityResponse:
        """ExecuteActivity with a JSON input."""
        request = session_service_pb2.ExecuteActivityRequest(
            session_id=session_id, activity_type=activity_type,
            input=session_pb2.Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode()))
        if start_to_close is not None:
            request.start_to_close_timeout.CopyFrom(seconds(start_to_close))
        return await self.stub.ExecuteActivity(request, timeout=30)

    async def sessions(self, **filters: Any) -> list[session_pb2.Session]:
        """Every session matching the filters (all pages)."""
        out: list[session_pb2.Session] = []
        token = ""
        while True:
            reply = await self.stub.ListSessions(session_service_pb2.ListSessionsRequest(page_token=token, **filters))
            out.extend(reply.sessions)
            if not reply.next_page_token:
                return out
            token = reply.next_page_token

    async def workers(self, task_queue: str = "") -> dict[str, session_pb2.WorkerInfo]:
        """Connected workers by worker id (all pages)."""
        out: dict[str, session_pb2.WorkerInfo] = {}
        token = ""
        while True:
            reply = await self.stub.ListWorkers(
                session_service_pb2.ListWorkersRequest(task_queue=task_queue, page_token=token))
            out.update({w.worker_id: w for w in reply.workers})
            if not reply.next_page_token:
                return out
            token = reply.next_page_token


ServerFactory = Callable[..., Awaitable[Sessiond]]


@pytest_asyncio.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """A factory: ``await make_server(heartbeat_timeout=timedelta(...))`` starts a server on port 0."""
    running: list[Sessiond] = []

    async def make(**config: Any) -> Sessiond:
        # No recovery window unless a test asks for one: a fresh server here is not a restart, and
        # unknown ids should answer NOT_FOUND at once.
        config.setdefault("recovery_window", timedelta(0))
        server, port = await create_server(ServerConfig(listen="127.0.0.1:0", **config))
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        handle = Sessiond(server, port, channel, session_service_pb2_grpc.SessionServiceStub(channel))
        running.append(handle)
        return handle

    yield make
    for handle in reversed(running):
        await handle.channel.close()
        await handle.server.stop(0)


@pytest_asyncio.fixture
async def sessiond(make_server: ServerFactory) -> Sessiond:
    """A server with the default configuration."""
    return await make_server()


@pytest.fixture
def metrics() -> Iterator[tuple[SessionMetrics, int]]:
    """Metrics exported on a Prometheus endpoint bound to a free port: (metrics, port). The modules
    that use it override ``sessiond`` with a server reporting to it."""
    session_metrics, stop_metrics, port = configure_metrics("127.0.0.1:0")
    assert port is not None
    yield session_metrics, port
    stop_metrics()


# --------------------------------------------------------------------- in-process workers


WorkerFactory = Callable[..., Awaitable[RawWorker]]


@pytest_asyncio.fixture
async def make_worker(sessiond: Sessiond) -> AsyncIterator[WorkerFactory]:
    """A factory of registered in-process raw workers on ``sessiond`` (stopped at teardown)."""
    started: list[RawWorker] = []

    async def make(worker_id: str = "", *, task_queue: str = QUEUE, capacity: int = 1, target: str | None = None,
                   **kwargs: Any) -> RawWorker:
        worker = RawWorker(target or sessiond.target, task_queue, worker_id=worker_id, capacity=capacity, **kwargs)
        started.append(worker)
        return await worker.start()

    yield make
    for worker in started:
        await worker.stop()


# --------------------------------------------------------------------- worker processes


class WorkerProcess(EventProcess):
    """A raw worker running as a separate OS process; its JSON event lines are collected."""

    async def wait_for(self, event: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:  # noqa: ASYNC109, RUF100
        """Wait for an event line (see :meth:`seen`)."""
        return await eventually(lambda: self.seen_or_exited(event, **fields), timeout=timeout,
                                message=f"worker process event {event} {fields}")  # type: ignore[no-any-return]

    async def command(self, line: str) -> None:
        """Send a stdin command (goodbye, goodbye drain, close, pause, resume)."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()


ProcessFactory = Callable[..., Awaitable[WorkerProcess]]


@pytest_asyncio.fixture
async def spawn_worker(sessiond: Sessiond) -> AsyncIterator[ProcessFactory]:
    """A factory of raw workers as OS processes, registered before it returns; always reaped."""
    spawned: list[WorkerProcess] = []
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}

    async def spawn(worker_id: str, *, task_queue: str = QUEUE, capacity: int = 1,
                    host_name: str = "", capacities: dict[str, int] | None = None,
                    labels: dict[str, str] | None = None) -> WorkerProcess:
        extra = [arg for name, amount in (capacities or {}).items() for arg in ("--resource", f"{name}={amount}")]
        extra += [arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.rawworker", "--target", sessiond.target,
            "--task-queue", task_queue, "--worker-id", worker_id, "--capacity", str(capacity),
            "--host-name", host_name, *extra,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd=REPO_ROOT,
        )
        worker = WorkerProcess(process)
        spawned.append(worker)
        await worker.wait_for("registered", timeout=30)
        return worker

    yield spawn
    for worker in spawned:
        await worker.reap()


__all__ = [
    "CLOSED",
    "FAILED",
    "OPEN",
    "QUEUE",
    "REPO_ROOT",
    "Sessiond",
    "WorkerProcess",
    "error_info",
    "eventually",
    "options",
    "rpc_error",
    "seconds",
]


# --------------------------------------------------------------------- the Python client library

StartWorker = Callable[..., Awaitable[ClientWorkerProcess]]


@pytest_asyncio.fixture
async def client(sessiond: Sessiond) -> AsyncIterator[SessionClient]:
    """A SessionClient connected to ``sessiond``."""
    async with await SessionClient.connect(sessiond.target, default_rpc_timeout=10) as connected:
        yield connected


@pytest_asyncio.fixture
async def start_worker(sessiond: Sessiond, request: pytest.FixtureRequest) -> AsyncIterator[StartWorker]:
    """Start SessionWorker processes on ``sessiond`` and the test module's ``QUEUE`` (always reaped)."""
    queue = request.module.QUEUE
    async with worker_pool() as start:

        async def start_on_server(**kwargs: object) -> ClientWorkerProcess:
            return await start(sessiond.target, queue, **kwargs)

        yield start_on_server
