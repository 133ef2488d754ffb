"""A blocking API for programs that are not asyncio programs: :class:`SyncSessionClient`.

It runs a :class:`~sessiond_client.SessionClient` on a private event loop in a background thread
and waits for each call, so every behaviour is the async client's: the watch that fails running
activities the moment the worker dies, completion on exit, retries, converters, typed calls. The
context rule ("no session inside an open session") holds per thread of the caller. Interrupting a
blocked call (Ctrl-C) cancels it on the loop too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from contextvars import ContextVar
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, TypeVarTuple, overload

from sessiond_client._client import DEFAULT_CALLER_TIMEOUT, SessionClient
from sessiond_client._converter import PayloadConverter
from sessiond_client._errors import SessionAlreadyOpenError
from sessiond_client._retry_policy import RetryPolicy
from sessiond_client._session import Session, SessionContext
from sessiond_client._time import Duration
from sessiond_client._types import SessionFailure, SessionInfo, SessionState, WaitingRequests, WorkerInfo

R = TypeVar("R")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_current: ContextVar[SyncSession | None] = ContextVar("sessiond_sync_session", default=None)


class _LoopThread:
    """An event loop running forever in a daemon thread; coroutines are submitted and waited for."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sessiond-sync-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("SyncSessionClient was called from its own loop (from a callback?): use the async API")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C) or timed out: stop the work on the loop as well
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncSessionClient:
    """The blocking twin of :class:`~sessiond_client.SessionClient` (same arguments, same semantics)::

        with SyncSessionClient("127.0.0.1:50051") as client:
            with client.create_session("fileprocessing") as session:
                path = session.execute_activity(download, "https://example.com/a.csv")

    Thread-safe: any thread may call it. ``close()`` (or leaving the ``with`` block) ends its thread.
    """

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        auth_token: str | None = None,
        auth_token_file: str | os.PathLike[str] | None = None,
        default_rpc_timeout: Duration = 30.0,
        converter: PayloadConverter | None = None,
        channel_options: tuple[tuple[str, int | str], ...] = (),
        wait_ready: bool = True,
    ) -> None:
        """Connect: the arguments and their meaning are those of :meth:`SessionClient.connect`.

        Raises:
            RPCError: ``UNAVAILABLE`` when the server could not be reached in time.
        """
        options: dict[str, Any] = {
            "tls": tls, "root_certificates": root_certificates, "private_key": private_key,
            "certificate_chain": certificate_chain, "auth_token": auth_token, "auth_token_file": auth_token_file,
            "default_rpc_timeout": default_rpc_timeout, "converter": converter, "channel_options": channel_options,
            "wait_ready": wait_ready,
        }
        self._loop = _LoopThread()
        try:
            self._client = self._loop.run(_connect(target, options))
        except BaseException:
            self._loop.stop()
            raise
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Finish background completions, close the channel and stop the loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._client.close())
        finally:
            self._loop.stop()

    @property
    def async_client(self) -> SessionClient:
        """The async client underneath (use it only through the loop it runs on)."""
        return self._client

    @property
    def server_incarnation(self) -> str | None:
        """As :attr:`SessionClient.server_incarnation`."""
        return self._client.server_incarnation

    def create_session(
        self,
        task_queue: str,
        *,
        creation_timeout: Duration | None = None,
        execution_timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
        owner: str | None = None,
        request_id: str | None = None,
        caller_timeout: Duration | None = DEFAULT_CALLER_TIMEOUT,
        reattach_timeout: Duration | None = None,
        resources: Mapping[str, int] | None = None,
        selector: str | None = None,
    ) -> SyncSessionContext:
        """Open a session (arguments as :meth:`SessionClient.create_session`): a context manager
        yielding a :class:`SyncSession`, completed on exit."""
        return SyncSessionContext(self, self._client.create_session(
            task_queue, creation_timeout=creation_timeout, execution_timeout=execution_timeout,
            heartbeat_timeout=heartbeat_timeout, owner=owner, request_id=request_id,
            caller_timeout=caller_timeout, reattach_timeout=reattach_timeout, resources=resources,
            selector=selector))

    def recreate_session(
        self,
        recreate_token: bytes,
        *,
        creation_timeout: Duration | None = None,
        execution_timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
        owner: str | None = None,
        request_id: str | None = None,
        caller_timeout: Duration | None = DEFAULT_CALLER_TIMEOUT,
        reattach_timeout: Duration | None = None,
        resources: Mapping[str, int] | None = None,
    ) -> SyncSessionContext:
        """A new session on the worker ``recreate_token`` names (as :meth:`SessionClient.recreate_session`)."""
        return SyncSessionContext(self, self._client.recreate_session(
            recreate_token, creation_timeout=creation_timeout, execution_timeout=execution_timeout,
            heartbeat_timeout=heartbeat_timeout, owner=owner, request_id=request_id,
            caller_timeout=caller_timeout, reattach_timeout=reattach_timeout, resources=resources))

    def get_session_info(self, session_id: str) -> SessionInfo:
        """As :meth:`SessionClient.get_session_info`."""
        return self._loop.run(self._client.get_session_info(session_id))

    def complete_session(self, session_id: str) -> SessionInfo:
        """As :meth:`SessionClient.complete_session`."""
        return self._loop.run(self._client.complete_session(session_id))

    def list_sessions(self, *, task_queue: str | None = None, owner: str | None = None,
                      state: SessionState | None = None, page_size: int = 0,
                      principal: str | None = None, resource: str | None = None) -> Iterator[SessionInfo]:
        """As :meth:`SessionClient.list_sessions`: pages are fetched as the iteration needs them."""
        return self._iterate(self._client.list_sessions(task_queue=task_queue, owner=owner, state=state,
                                                        page_size=page_size, principal=principal,
                                                        resource=resource))

    def list_workers(self, *, task_queue: str | None = None, page_size: int = 0) -> Iterator[WorkerInfo]:
        """As :meth:`SessionClient.list_workers`."""
        return self._iterate(self._client.list_workers(task_queue=task_queue, page_size=page_size))

    def waiting_requests(self, *, task_queue: str | None = None) -> list[WaitingRequests]:
        """As :meth:`SessionClient.waiting_requests`."""
        return self._loop.run(self._client.waiting_requests(task_queue=task_queue))

    def _iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(items)
            except StopAsyncIteration:
                return False, None

        async def close() -> None:
            await items.aclose()  # type: ignore[attr-defined]  # an async generator

        try:
            while True:
                more, item = self._loop.run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]  # present whenever more is True
        finally:
            self._loop.run(close())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)


async def _connect(target: str, options: Mapping[str, Any]) -> SessionClient:
    return await SessionClient.connect(target, **options)


class SyncSessionContext:
    """The context manager :meth:`SyncSessionClient.create_session` returns."""

    def __init__(self, client: SyncSessionClient, context: SessionContext) -> None:
        """Bind the async context manager; nothing happens until ``with``."""
        self._client = client
        self._context = context
        self._token: Any = None

    def __enter__(self) -> SyncSession:
        outer = _current.get()
        if outer is not None and not outer.state.is_terminal:
            raise SessionAlreadyOpenError(
                f"found existing open session {outer.id} in the context; complete it first",
                metadata={"session_id": outer.id})
        session = SyncSession(self._client, self._client._run(_enter(self._context)))
        self._token = _current.set(session)
        return session

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        self._client._run(_exit(self._context, exc_type, exc, tb))


async def _enter(context: SessionContext) -> Session:
    return await context.__aenter__()


async def _exit(context: SessionContext, exc_type: type[BaseException] | None, exc: BaseException | None,
                tb: TracebackType | None) -> None:
    await context.__aexit__(exc_type, exc, tb)


class SyncSession:
    """The blocking twin of :class:`~sessiond_client.Session`."""

    def __init__(self, client: SyncSessionClient, session: Session) -> None:
        """Wrap an async session; built by :class:`SyncSessionContext`."""
        self._client = client
        self._session = session

    def __repr__(self) -> str:
        return f"Sync{self._session!r}"

    @property
    def info(self) -> SessionInfo:
        """The latest :class:`SessionInfo` (kept current by the watch)."""
        return self._session.info

    @property
    def id(self) -> str:
        """The session id."""
        return self._session.id

    @property
    def recreate_token(self) -> bytes:
        """Token for :meth:`SyncSessionClient.recreate_session`."""
        return self._session.recreate_token

    @property
    def state(self) -> SessionState:
        """The latest known state."""
        return self._session.state

    @property
    def failed(self) -> bool:
        """True once the session is known to have FAILED."""
        return self._session.failed

    @property
    def failure(self) -> SessionFailure | None:
        """Why the session failed, once it has."""
        return self._session.failure

    def wait_failed(self, timeout: float | None = None) -> SessionFailure | None:
        """Block until the session ends (at most ``timeout`` s); as :meth:`Session.wait_failed`.

        Raises:
            TimeoutError: ``timeout`` passed first.
        """
        try:
            return self._client._loop.run(_wait_failed(self._session), timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"session {self.id} did not end within {timeout} s") from None

    def complete(self) -> SessionInfo:
        """As :meth:`Session.complete`."""
        return self._client._run(self._session.complete())

    @overload
    def execute_activity(
        self, activity: Callable[[*Ts], Awaitable[R]], /, *args: *Ts, start_to_close_timeout: Duration = ...,
        heartbeat_timeout: Duration | None = ..., retry_policy: RetryPolicy | None = ...,
        headers: Mapping[str, str] | None = ...,
    ) -> R: ...

    @overload
    def execute_activity(
        self, activity: Callable[[*Ts], R], /, *args: *Ts, start_to_close_timeout: Duration = ...,
        heartbeat_timeout: Duration | None = ..., retry_policy: RetryPolicy | None = ...,
        headers: Mapping[str, str] | None = ...,
    ) -> R: ...

    @overload
    def execute_activity(
        self, activity: str, /, *args: Any, start_to_close_timeout: Duration = ...,
        heartbeat_timeout: Duration | None = ..., retry_policy: RetryPolicy | None = ...,
        headers: Mapping[str, str] | None = ..., result_type: type[R],
    ) -> R: ...

    @overload
    def execute_activity(
        self, activity: str, /, *args: Any, start_to_close_timeout: Duration = ...,
        heartbeat_timeout: Duration | None = ..., retry_policy: RetryPolicy | None = ...,
        headers: Mapping[str, str] | None = ...,
    ) -> Any: ...

    def execute_activity(  # type: ignore[misc]  # mypy cannot match TypeVarTuple overloads to an implementation
        self, activity: str | Callable[..., Any], /, *args: Any,
        start_to_close_timeout: Duration = timedelta(minutes=5), heartbeat_timeout: Duration | None = None,
        retry_policy: RetryPolicy | None = None, headers: Mapping[str, str] | None = None, result_type: Any = None,
    ) -> Any:
        """Run one activity and return its result: as :meth:`Session.execute_activity`, blocking."""
        return self._client._run(_execute(self._session, activity, args, start_to_close_timeout, heartbeat_timeout,
                                          retry_policy, headers, result_type))


async def _wait_failed(session: Session) -> SessionFailure | None:
    return await session.wait_failed()


async def _execute(session: Session, activity: str | Callable[..., Any], args: tuple[Any, ...],
                   start_to_close_timeout: Duration, heartbeat_timeout: Duration | None,
                   retry_policy: RetryPolicy | None, headers: Mapping[str, str] | None, result_type: Any) -> Any:
    untyped: Any = session  # forwards the implementation's arguments, already checked by the overloads
    return await untyped.execute_activity(
        activity, *args, start_to_close_timeout=start_to_close_timeout, heartbeat_timeout=heartbeat_timeout,
        retry_policy=retry_policy, headers=headers, result_type=result_type)
