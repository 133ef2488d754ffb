"""An in-memory stand-in for the generated SessionService stub, for network-free client tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from sessiond_client import SessionClient
from sessiond_client.api.v1 import session_pb2, session_service_pb2

OPEN = session_pb2.SESSION_STATE_OPEN
FAILED = session_pb2.SESSION_STATE_FAILED
CLOSED = session_pb2.SESSION_STATE_CLOSED


def session_msg(session_id: str, state: int = OPEN, cause: int = 0) -> session_pb2.Session:
    msg = session_pb2.Session(
        session_id=session_id,
        task_queue="q",
        state=state,  # type: ignore[arg-type]
        worker=session_pb2.WorkerRef(worker_id="w-1", identity="1@h", host_name="h"),
        recreate_token=b"tok-" + session_id.encode(),
    )
    if state == FAILED:
        msg.failure.CopyFrom(session_pb2.Failure(cause=cause, message="lost"))  # type: ignore[arg-type]
    return msg


def aio_error(code: grpc.StatusCode, reason: str = "", **metadata: str) -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata()
    if reason:
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="sessiond", metadata=metadata))
        status = status_pb2.Status(code=code.value[0], message=reason, details=[packed])
        trailers.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, reason or code.name, None)


class FakeUnaryCall:
    """Awaitable and cancellable, like grpc.aio.UnaryUnaryCall."""

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.cancelled = False

    def __await__(self) -> Generator[Any, None, Any]:
        return self.future.__await__()

    def cancel(self) -> bool:
        self.cancelled = True
        self.future.cancel()
        return True


class FakeWatch:
    """A server stream fed by the test with :meth:`push`; ends after a terminal state or :meth:`fail`."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.queue: asyncio.Queue[session_pb2.Session | BaseException] = asyncio.Queue()
        self.cancelled = False

    def push(self, state: int, cause: int = 0) -> None:
        self.queue.put_nowait(session_msg(self.session_id, state, cause))

    def fail(self, error: BaseException) -> None:
        self.queue.put_nowait(error)

    async def __aiter__(self) -> AsyncIterator[session_service_pb2.WatchSessionResponse]:
        while True:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield session_service_pb2.WatchSessionResponse(session=item)
            if item.state != OPEN:
                return

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    """Records requests; sessions are OPEN on create and CLOSED on complete (unless failed first)."""

    def __init__(self) -> None:
        self.created: list[tuple[session_service_pb2.CreateSessionRequest, float | None]] = []
        self.completed: list[str] = []
        self.recreated: list[session_service_pb2.RecreateSessionRequest] = []
        self.watches: dict[str, FakeWatch] = {}
        self.executions: list[tuple[session_service_pb2.ExecuteActivityRequest, FakeUnaryCall]] = []
        self.complete_error: BaseException | None = None
        self.watch_error: BaseException | None = None
        self._failed: dict[str, int] = {}
        self._executed = asyncio.Event()

    async def CreateSession(
        self, request: session_service_pb2.CreateSessionRequest, timeout: float | None = None, metadata: Any = None,
        wait_for_ready: bool | None = None,
    ) -> session_service_pb2.CreateSessionResponse:
        self.created.append((request, timeout))
        return session_service_pb2.CreateSessionResponse(session=session_msg(f"s-{len(self.created)}"))

    async def RecreateSession(
        self, request: session_service_pb2.RecreateSessionRequest, timeout: float | None = None, metadata: Any = None,
        wait_for_ready: bool | None = None,
    ) -> session_service_pb2.RecreateSessionResponse:
        self.recreated.append(request)
        return session_service_pb2.RecreateSessionResponse(session=session_msg(f"r-{len(self.recreated)}"))

    async def CompleteSession(
        self, request: session_service_pb2.CompleteSessionRequest, timeout: float | None = None, metadata: Any = None,
        wait_for_ready: bool | None = None,
    ) -> session_service_pb2.CompleteSessionResponse:
        self.completed.append(request.session_id)
        if self.complete_error is not None:
            raise self.complete_error
        state = FAILED if request.session_id in self._failed else CLOSED
        return session_service_pb2.CompleteSessionResponse(session=session_msg(request.session_id, state))

    def WatchSession(self, request: session_service_pb2.WatchSessionRequest, metadata: Any = None) -> FakeWatch:
        watch = self.watches[request.session_id] = FakeWatch(request.session_id)
        if self.watch_error is not None:
            watch.fail(self.watch_error)
        elif request.session_id in self._failed:
            watch.push(FAILED, self._failed[request.session_id])
        else:
            watch.push(OPEN)
        return watch

    def ExecuteActivity(
        self, request: session_service_pb2.ExecuteActivityRequest, timeout: float | None = None, metadata: Any = None,
        wait_for_ready: bool | None = None,
    ) -> FakeUnaryCall:
        call = FakeUnaryCall()
        self.executions.append((request, call))
        self._executed.set()
        return call

    async def wait_executions(self, count: int) -> None:
        """Wait until ``count`` ExecuteActivity calls were made."""
        while len(self.executions) < count:
            self._executed.clear()
            await self._executed.wait()

    def fail_session(self, session_id: str, cause: int) -> None:
        self._failed[session_id] = cause
        if session_id in self.watches:
            self.watches[session_id].push(FAILED, cause)


def fake_client() -> tuple[SessionClient, FakeStub]:
    """A real SessionClient (its channel is never used) whose stub is a FakeStub."""
    client = SessionClient("127.0.0.1:9", default_rpc_timeout=7.0)
    stub = FakeStub()
    client._stub = stub  # type: ignore[assignment]
    return client, stub
