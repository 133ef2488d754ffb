"""The caller's entry point: :class:`SessionClient`, a typed async API over ``SessionService``."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import grpc
import grpc.aio

from sessiond_client import _tracing
from sessiond_client._connection import ConnectionConfig, Metadata
from sessiond_client._converter import DefaultPayloadConverter, PayloadConverter
from sessiond_client._errors import (
    OwnerUnavailableError,
    RecoveringError,
    RPCError,
    ServerShuttingDownError,
    SessiondError,
    _from_rpc_error,
)
from sessiond_client._limits import DEFAULT_MAX_MESSAGE_SIZE
from sessiond_client._owners import OwnerHints
from sessiond_client._retry import Backoff
from sessiond_client._session import SessionContext
from sessiond_client._time import Duration, to_seconds, to_timedelta
from sessiond_client._types import SessionInfo, SessionOptions, SessionState, WaitingRequests, WorkerInfo
from sessiond_client.api.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

logger = logging.getLogger("sessiond_client")

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class _PlacedResponse(Protocol):
    """CreateSessionResponse and RecreateSessionResponse: both carry the placed session."""

    @property
    def session(self) -> session_pb2.Session: ...


_Placed = TypeVar("_Placed", bound=_PlacedResponse)

# The server's default creation_timeout (SPEC §2.2); used only to size the RPC deadline when the
# caller leaves creation_timeout to the server.
_SERVER_DEFAULT_CREATION_TIMEOUT = 60.0
# Only codes that mean "the request may not have reached sessiond" are retried, and only for
# idempotent calls (reads, CompleteSession, Create/Recreate with their request_id).
_UNARY_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
_UNARY_ATTEMPTS = 4
# The Python client's default caller_timeout (SPEC §6.2): a crashed caller frees its slot within a minute.
DEFAULT_CALLER_TIMEOUT = timedelta(seconds=60)


class SessionClient:
    """An async client for sessiond.

    Build it inside a running event loop (grpc.aio binds the channel to it), with
    ``await SessionClient.connect(target)`` or the constructor, and close it with
    ``await client.close()`` or ``async with``::

        async with await SessionClient.connect("127.0.0.1:50051") as client:
            async with client.create_session("fileprocessing") as session:
                path = await session.execute_activity("download", url)
                await session.execute_activity("process", path)

    The raw generated stub stays reachable as :attr:`stub`.
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
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        recovery_window: Duration = 30.0,
    ) -> None:
        """Open a channel to ``target`` (``host:port``). Must be called inside a running event loop.

        Args:
            target: sessiond's address, for example ``"127.0.0.1:50051"``.
            tls: Use TLS (implied by any certificate argument).
            root_certificates: PEM roots to verify the server; ``None`` = the system roots.
            private_key: PEM client key for mTLS (with ``certificate_chain``).
            certificate_chain: PEM client certificate chain for mTLS.
            auth_token: Bearer token sent as ``authorization`` metadata on every call.
            auth_token_file: A file whose first line is the bearer token (read once, when the client
                is made; keeps the token out of your code and environment). Not with ``auth_token``.
            default_rpc_timeout: Deadline of plain RPCs, and the margin added to calls that wait
                (Create/Recreate wait ``creation_timeout``, ExecuteActivity ``start_to_close_timeout``).
            converter: Payload converter for activity arguments and results (default: JSON + raw bytes).
            channel_options: Extra grpc channel options.
            max_message_size: The server's ``--max-message-size`` (bytes, default 16 MiB): an
                activity input over it raises :class:`MessageTooLargeError` before it is sent,
                and results up to it are received.
            recovery_window: The server's ``--recovery-window``. While the server restarts, calls
                wait for it and open sessions ride through; a session whose server stays
                unreachable longer than this is reported FAILED with ``SERVER_UNREACHABLE``
                (its worker has dropped it by then).
        """
        asyncio.get_running_loop()  # fail early and clearly outside a loop
        self._config = ConnectionConfig(
            target=target,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            auth_token=auth_token,
            auth_token_file=auth_token_file,
            channel_options=channel_options,
            max_message_size=max_message_size,
        )
        self._default_rpc_timeout = to_seconds(default_rpc_timeout)
        if self._default_rpc_timeout <= 0:
            raise ValueError("default_rpc_timeout must be positive")
        self._converter = converter or DefaultPayloadConverter()
        self._recovery_window = to_seconds(recovery_window)
        self._metadata: Metadata = self._config.call_metadata()
        self._channel = self._config.open_channel()
        self._stub = session_service_pb2_grpc.SessionServiceStub(self._channel)
        self._owners = OwnerHints(self._config)
        self._background: set[asyncio.Future[Any]] = set()
        self._server_incarnation: str | None = None
        self._closed = False

    @classmethod
    async def connect(
        cls,
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
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        recovery_window: Duration = 30.0,
        wait_ready: bool = True,
    ) -> Self:
        """Build a client (arguments as for the constructor) and, with ``wait_ready``, wait until
        the channel is connected, at most ``default_rpc_timeout``.

        Raises:
            RPCError: ``UNAVAILABLE`` when the server could not be reached in time.
        """
        client = cls(
            target,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            auth_token=auth_token,
            auth_token_file=auth_token_file,
            default_rpc_timeout=default_rpc_timeout,
            converter=converter,
            channel_options=channel_options,
            max_message_size=max_message_size,
            recovery_window=recovery_window,
        )
        if wait_ready:
            try:
                async with asyncio.timeout(client._default_rpc_timeout):
                    await client._channel.channel_ready()
            except TimeoutError:
                await client.close()
                raise RPCError(
                    f"could not connect to {target} within {client._default_rpc_timeout:g} s",
                    code=grpc.StatusCode.UNAVAILABLE,
                ) from None
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Finish session completions still running in the background, then close the channel."""
        if self._closed:
            return
        self._closed = True
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._channel.close(grace)
        await self._owners.close(grace)

    @property
    def stub(self) -> session_service_pb2_grpc.SessionServiceAsyncStub:
        """The generated ``SessionService`` stub on this client's channel (for raw calls)."""
        return self._stub

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying grpc.aio channel."""
        return self._channel

    @property
    def converter(self) -> PayloadConverter:
        """The payload converter for activity arguments and results."""
        return self._converter

    @property
    def max_message_size(self) -> int:
        """The message-size limit this client checks activity inputs against, in bytes."""
        assert self._config.max_message_size is not None
        return self._config.max_message_size

    @property
    def default_rpc_timeout(self) -> float:
        """Deadline of plain RPCs, in seconds."""
        return self._default_rpc_timeout

    @property
    def recovery_window(self) -> float:
        """The server's recovery window in seconds (learned from :meth:`get_session_info`)."""
        return self._recovery_window

    @property
    def server_incarnation(self) -> str | None:
        """The server's incarnation id from the last :meth:`get_session_info` (changes at each server start)."""
        return self._server_incarnation

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
    ) -> SessionContext:
        """Open a session on a worker of ``task_queue``: an async context manager yielding a :class:`Session`.

        The session is completed when the block exits, also after an exception. ``None``
        options take the server defaults (creation 60 s, execution 24 h, heartbeat 20 s,
        reattach 0).

        Args:
            task_queue: The queue whose workers may take the session.
            creation_timeout: How long to wait for a free slot; 0 = do not wait (``NoCapacityError``).
            execution_timeout: The session's maximum life.
            heartbeat_timeout: Worker silence after which the session fails.
            caller_timeout: If this process vanishes (crash, partition), the session fails
                ``CALLER_LOST`` and frees its slot this long after its last sign of life; the
                session's watch keeps it attended meanwhile. Default 60 s; 0 = never.
            reattach_timeout: How long the session survives its worker's process restarting (it
                waits, detached, for a worker with the same worker_id). Default: the server's (0).
            owner: At most one OPEN session per owner (``ExistingOpenSessionError``).
            request_id: Idempotency key; defaults to a fresh UUID, so transport retries are safe.
            resources: What the session needs besides its slot, e.g. ``{"gpu": 1}``: it goes only to
                a worker with every amount free and holds them until it ends (the activity reads
                them in ``activity.info().resources``). Every amount is a hard limit.
            selector: Which workers may take it, by label: ``"zone=a"``, ``"gpu_model in
                (h100,a100)"``, ``"ssd"`` (the label exists), comma-separated for "and".

        Raises (on entering):
            SessionAlreadyOpenError: An OPEN session is already in this context.
            CreationTimeoutError, NoCapacityError, ExistingOpenSessionError, InvalidArgumentError
            (a malformed selector or resource names the field).
        """
        options = _options(creation_timeout, execution_timeout, heartbeat_timeout, caller_timeout, reattach_timeout,
                           resources, selector)
        request = session_service_pb2.CreateSessionRequest(
            task_queue=task_queue,
            options=options._to_proto(),
            owner=owner or "",
            request_id=request_id or str(uuid.uuid4()),
        )

        return self._placing(self._stub.CreateSession, request, creation_timeout)

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
    ) -> SessionContext:
        """Open a new session (new id) on the worker ``recreate_token`` names; same contract as
        :meth:`create_session`. ``resources`` are the new session's own (not the first one's); there
        is no selector: the worker is the token's.

        Raises (on entering):
            WorkerUnavailableError: That worker was not connected with a free slot in time.
            InvalidRecreateTokenError: The token is malformed or foreign.
        """
        options = _options(creation_timeout, execution_timeout, heartbeat_timeout, caller_timeout, reattach_timeout,
                           resources, None)
        request = session_service_pb2.RecreateSessionRequest(
            recreate_token=recreate_token,
            options=options._to_proto(),
            owner=owner or "",
            request_id=request_id or str(uuid.uuid4()),
        )

        return self._placing(self._stub.RecreateSession, request, creation_timeout)

    def _placing(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Placed],
        request: _Req,
        creation_timeout: Duration | None,
    ) -> SessionContext:
        """The context manager that places a session with ``method`` on entry (Create or Recreate)."""

        async def open_session() -> SessionInfo:
            response = await self._unary(
                method, request, rpc_timeout=self._creation_deadline(creation_timeout), retry=True
            )
            return SessionInfo._from_proto(response.session)

        return SessionContext(self, open_session)

    async def get_session_info(self, session_id: str) -> SessionInfo:
        """Read a session (also a terminal one, until its retention passes).

        Raises:
            SessionNotFoundError: Unknown id, or past retention.
        """
        response = await self._unary(
            self._stub.GetSessionInfo, session_service_pb2.GetSessionInfoRequest(session_id=session_id), retry=True,
            session_id=session_id, route=lambda stub: stub.GetSessionInfo,
        )
        if response.server_incarnation:
            self._server_incarnation = response.server_incarnation
        if response.HasField("recovery_window"):
            self._recovery_window = response.recovery_window.ToTimedelta().total_seconds()
        return SessionInfo._from_proto(response.session)

    async def complete_session(self, session_id: str) -> SessionInfo:
        """Complete a session by id (idempotent; a no-op on FAILED or CLOSED sessions)."""
        response = await self._unary(
            self._stub.CompleteSession, session_service_pb2.CompleteSessionRequest(session_id=session_id), retry=True,
            session_id=session_id, route=lambda stub: stub.CompleteSession,
        )
        return SessionInfo._from_proto(response.session)

    async def list_sessions(
        self,
        *,
        task_queue: str | None = None,
        owner: str | None = None,
        state: SessionState | None = None,
        page_size: int = 0,
        principal: str | None = None,
        resource: str | None = None,
    ) -> AsyncIterator[SessionInfo]:
        """Iterate over the sessions this client's principal may see (its own; an operator's: all),
        oldest first, fetching pages as needed.

        Args:
            task_queue: Only this queue's sessions.
            owner: Only this owner's sessions.
            state: Only sessions in this state.
            page_size: Sessions per page (0 = server default).
            principal: Only this principal's sessions (an operator's filter).
            resource: Only sessions that hold some of this resource (``"gpu"``).
        """
        token = ""
        while True:
            request = session_service_pb2.ListSessionsRequest(
                task_queue=task_queue or "",
                owner=owner or "",
                state=int(state) if state is not None else 0,  # type: ignore[arg-type]  # IntEnum is the wire value
                page_size=page_size,
                page_token=token,
                principal=principal or "",
                resource=resource or "",
            )
            response = await self._unary(self._stub.ListSessions, request, retry=True)
            for session in response.sessions:
                yield SessionInfo._from_proto(session)
            token = response.next_page_token
            if not token:
                return

    async def list_workers(self, *, task_queue: str | None = None, page_size: int = 0) -> AsyncIterator[WorkerInfo]:
        """Iterate over connected workers, fetching pages as needed.

        Args:
            task_queue: Only this queue's workers.
            page_size: Workers per page (0 = server default).
        """
        token = ""
        while True:
            request = session_service_pb2.ListWorkersRequest(
                task_queue=task_queue or "", page_size=page_size, page_token=token
            )
            response = await self._unary(self._stub.ListWorkers, request, retry=True)
            for worker in response.workers:
                yield WorkerInfo._from_proto(worker)
            token = response.next_page_token
            if not token:
                return

    async def waiting_requests(self, *, task_queue: str | None = None) -> list[WaitingRequests]:
        """The waiting creates (of ``task_queue``, or all), grouped by what they ask for, oldest
        first, each saying why it cannot be placed when no connected worker could ever hold it
        (the first page of ``ListWorkers``; at most 100 groups)."""
        request = session_service_pb2.ListWorkersRequest(task_queue=task_queue or "", page_size=1)
        response = await self._unary(self._stub.ListWorkers, request, retry=True)
        return [WaitingRequests._from_proto(w) for w in response.waiting]

    # -- internals -------------------------------------------------------------------------------

    def _creation_deadline(self, creation_timeout: Duration | None) -> float:
        # The RPC deadline must outlast the server-side wait, or the caller would see a bare
        # DEADLINE_EXCEEDED instead of CREATION_TIMEOUT / WORKER_UNAVAILABLE.
        wait = _SERVER_DEFAULT_CREATION_TIMEOUT if creation_timeout is None else max(to_seconds(creation_timeout), 0.0)
        return wait + self._default_rpc_timeout

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        rpc_timeout: float | None = None,
        retry: bool = False,
        session_id: str = "",
        route: Callable[[session_service_pb2_grpc.SessionServiceAsyncStub],
                        grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp]] | None = None,
    ) -> _Resp:
        """Call a unary RPC with the client's metadata; map errors; retry transport failures if idempotent.

        With several replicas, a call about ``session_id`` goes to the replica its owner hint names
        (``route`` picks the method on that replica's stub), and every answer's hint is noted.
        With tracing on, the call is one CLIENT span (retries included) carrying the session's ids.
        """
        name = type(request).__name__.removesuffix("Request")
        with _tracing.client_span(name) as span:
            try:
                response = await self._unary_attempts(method, request, rpc_timeout, retry, session_id, route)
            except SessiondError as err:
                _tracing.fail(span, err.reason or type(err).__name__, str(err), err.code)
                raise
            session = getattr(response, "session", None)
            if span is not None and session is not None:
                _tracing.annotate(
                    span,
                    session_id=session.session_id,
                    task_queue=session.task_queue,
                    worker_id=session.worker.worker_id,
                )
            return response

    async def _unary_attempts(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        rpc_timeout: float | None,
        retry: bool,
        session_id: str = "",
        route: Callable[[session_service_pb2_grpc.SessionServiceAsyncStub],
                        grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp]] | None = None,
    ) -> _Resp:
        loop = asyncio.get_running_loop()
        hints = self._owners
        deadline = loop.time() + (self._default_rpc_timeout if rpc_timeout is None else rpc_timeout)
        backoff = Backoff(0.05, 1.0)
        attempt = 0
        while True:
            attempt += 1
            direct = hints.stub_for(session_id) if hints.enabled and session_id and route is not None else None
            try:
                call = (method if direct is None or route is None else route(direct))(
                    request,
                    timeout=max(deadline - loop.time(), 0.001),
                    metadata=_tracing.with_trace_context(self._metadata),
                    # A call made while the server restarts waits for it (within the deadline).
                    wait_for_ready=direct is None,
                )
                response = await call
                if hints.enabled:
                    placed = getattr(response, "session", None)
                    hints.note(session_id or (placed.session_id if placed is not None else ""),
                               await call.trailing_metadata())
                return response
            except grpc.aio.AioRpcError as err:
                mapped: SessiondError = _from_rpc_error(err)
                transient = err.code() in _UNARY_RETRY_CODES and not mapped.reason
                if hints.enabled and session_id:
                    if direct is not None and transient:
                        hints.failed(session_id)  # the hinted replica did not answer: back to the channel
                        if loop.time() < deadline:
                            continue
                    hints.note(session_id, err.trailing_metadata())
                if isinstance(mapped, RecoveringError):
                    # Not answered yet (the session's worker has not reported it): nothing happened,
                    # so even a non-idempotent call may be repeated, until its deadline.
                    delay = min(backoff.next_delay() + 0.05, 1.0)
                    if loop.time() + delay < deadline:
                        await asyncio.sleep(delay)
                        continue
                    raise mapped from err
                if retry and attempt < _UNARY_ATTEMPTS and (
                        transient or isinstance(mapped, (ServerShuttingDownError, OwnerUnavailableError))):
                    delay = backoff.next_delay()
                    if loop.time() + delay < deadline:
                        logger.debug("retrying after %s (attempt %d)", err.code().name, attempt)
                        await asyncio.sleep(delay)
                        continue
                raise mapped from err

    def _keep(self, future: asyncio.Future[Any]) -> None:
        """Hold a background completion until it ends (and retrieve its exception so it is not logged)."""
        self._background.add(future)

        def done(f: asyncio.Future[Any]) -> None:
            self._background.discard(f)
            if not f.cancelled() and f.exception() is not None:
                logger.warning("background session completion failed: %s", f.exception())

        future.add_done_callback(done)


def _options(
    creation_timeout: Duration | None,
    execution_timeout: Duration | None,
    heartbeat_timeout: Duration | None,
    caller_timeout: Duration | None,
    reattach_timeout: Duration | None,
    resources: Mapping[str, int] | None,
    selector: str | None,
) -> SessionOptions:
    def span(value: Duration | None) -> timedelta | None:
        return None if value is None else to_timedelta(value)

    return SessionOptions(
        creation_timeout=span(creation_timeout),
        execution_timeout=span(execution_timeout),
        heartbeat_timeout=span(heartbeat_timeout),
        caller_timeout=span(caller_timeout),
        reattach_timeout=span(reattach_timeout),
        resources=_resources(resources),
        selector=selector or "",
    )


def _resources(values: Mapping[str, int] | None) -> Mapping[str, int]:
    """Check amounts here (whole numbers, not negative) so a typo fails before the call; names and
    limits are the server's to judge (it names the field)."""
    if not values:
        return {}
    for name, amount in values.items():
        if not isinstance(name, str):
            raise TypeError(f"resource names must be strings, got {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"resources[{name!r}] must be an int, got {amount!r}")
        if amount < 0:
            raise ValueError(f"resources[{name!r}] must not be negative, got {amount}")
    return dict(values)
