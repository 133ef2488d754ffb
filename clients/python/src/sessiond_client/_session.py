"""A caller's handle on one open session, and the async context manager that opens and completes it.

A :class:`Session` follows its own state with a background ``WatchSession`` stream. The moment
the watch reports a terminal state, every ``execute_activity`` in flight stops waiting for its
RPC and raises (:class:`SessionFailedError` with the cause, or :class:`SessionCompletedError`),
so a caller learns of a dead worker within one server round trip instead of at an RPC deadline.

The context rule of the original ("found existing open session in the context") lives here too:
a context variable holds the innermost session, and creating another one while it is OPEN raises
:class:`SessionAlreadyOpenError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar, Token
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, overload

import grpc
import grpc.aio

from sessiond_client import _tracing
from sessiond_client._activity import _activity_name
from sessiond_client._converter import PayloadConverter
from sessiond_client._errors import (
    ActivityError,
    ActivityHeartbeatTimeoutError,
    MessageTooLargeError,
    RecoveringError,
    ServerShuttingDownError,
    SessionAlreadyOpenError,
    SessionClosedError,
    SessionCompletedError,
    SessiondError,
    SessionFailedError,
    SessionNotFoundError,
    _from_rpc_error,
)
from sessiond_client._limits import map_bytes, oversize, payload_bytes
from sessiond_client._retry import TRANSIENT_CODES, Backoff
from sessiond_client._retry_policy import RetryPolicy
from sessiond_client._time import Duration, duration_to_proto, to_seconds
from sessiond_client._typehints import activity_hints
from sessiond_client._types import FailureCause, SessionFailure, SessionInfo, SessionState
from sessiond_client.api.v1 import session_pb2, session_service_pb2

if TYPE_CHECKING:
    from sessiond_client._client import SessionClient

logger = logging.getLogger("sessiond_client")

R = TypeVar("R")
Ts = TypeVarTuple("Ts")

_current_session: ContextVar[Session | None] = ContextVar("sessiond_session", default=None)


def current_session() -> Session | None:
    """The innermost session opened by ``async with client.create_session(...)`` in this context, if any."""
    return _current_session.get()


class Session:
    """One open session: run activities on its worker, watch for its failure.

    Obtained from ``async with client.create_session(...) as session`` (or ``recreate_session``);
    the context manager completes it on exit.
    """

    def __init__(self, client: SessionClient, info: SessionInfo) -> None:
        """Wrap ``info``; the library builds sessions, callers use the context managers."""
        self._client = client
        self._info = info
        # Set once the session is known to be terminal (watch, CompleteSession, or an RPC verdict).
        self._ended = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        if info.state.is_terminal:
            self._ended.set()

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, state={self.state.name}, worker={self._info.worker.worker_id!r})"

    @property
    def info(self) -> SessionInfo:
        """The latest :class:`SessionInfo` the server reported (the watch keeps it current)."""
        return self._info

    @property
    def id(self) -> str:
        """The session id."""
        return self._info.session_id

    @property
    def recreate_token(self) -> bytes:
        """Token for :meth:`SessionClient.recreate_session`: a new session on the same worker."""
        return self._info.recreate_token

    @property
    def state(self) -> SessionState:
        """The latest known state."""
        return self._info.state

    @property
    def failed(self) -> bool:
        """True once the session is known to have FAILED."""
        return self._info.state is SessionState.FAILED

    @property
    def failure(self) -> SessionFailure | None:
        """Why the session failed, once it has."""
        return self._info.failure

    async def wait_failed(self) -> SessionFailure | None:
        """Wait until the session ends; return its failure if it FAILED, ``None`` if it was CLOSED.

        Race it against your own work to stop as soon as the worker is lost::

            failure = asyncio.create_task(session.wait_failed())
        """
        await self._ended.wait()
        return self._info.failure

    @overload
    async def execute_activity(
        self,
        activity: Callable[[*Ts], Awaitable[R]],
        /,
        *args: *Ts,
        start_to_close_timeout: Duration = ...,
        heartbeat_timeout: Duration | None = ...,
        retry_policy: RetryPolicy | None = ...,
        headers: Mapping[str, str] | None = ...,
    ) -> R: ...

    @overload
    async def execute_activity(
        self,
        activity: Callable[[*Ts], R],
        /,
        *args: *Ts,
        start_to_close_timeout: Duration = ...,
        heartbeat_timeout: Duration | None = ...,
        retry_policy: RetryPolicy | None = ...,
        headers: Mapping[str, str] | None = ...,
    ) -> R: ...

    @overload
    async def execute_activity(
        self,
        activity: str,
        /,
        *args: Any,
        start_to_close_timeout: Duration = ...,
        heartbeat_timeout: Duration | None = ...,
        retry_policy: RetryPolicy | None = ...,
        headers: Mapping[str, str] | None = ...,
        result_type: type[R],
    ) -> R: ...

    @overload
    async def execute_activity(
        self,
        activity: str,
        /,
        *args: Any,
        start_to_close_timeout: Duration = ...,
        heartbeat_timeout: Duration | None = ...,
        retry_policy: RetryPolicy | None = ...,
        headers: Mapping[str, str] | None = ...,
    ) -> Any: ...

    # mypy cannot check an implementation against TypeVarTuple overloads (it accepts all of them).
    async def execute_activity(  # type: ignore[misc]
        self,
        activity: str | Callable[..., Any],
        /,
        *args: Any,
        start_to_close_timeout: Duration = timedelta(minutes=5),
        heartbeat_timeout: Duration | None = None,
        retry_policy: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        result_type: Any = None,
    ) -> Any:
        """Run one activity on the session's worker and return its decoded result.

        Pass the activity function itself to have the call type-checked (mypy checks the
        arguments against its parameters and infers the result type) and the result decoded as
        its return annotation; or pass its registered name (then ``result_type=`` decodes the
        result, else it comes back as plain JSON types)::

            path = await session.execute_activity(download, url)  # path: str

        Args:
            activity: The activity function, or its registered name (the function's
                ``activity.defn`` name or ``__name__`` is used).
            *args: Arguments, encoded by the client's converter as one payload.
            start_to_close_timeout: How long one attempt may run (the server cancels it after).
            heartbeat_timeout: The longest the activity may go without ``activity.heartbeat()``;
                then it is cancelled and the attempt fails with :class:`ActivityHeartbeatTimeoutError`.
            retry_policy: Retry :class:`ActivityError` (never a session failure) with backoff; each
                attempt gets the previous attempt's latest heartbeat details.
            headers: Propagation headers forwarded to the worker.
            result_type: The type to decode the result as, when ``activity`` is a name.

        Raises:
            ActivityError: The activity raised on the worker (after the retry policy's last
                attempt); the session stays OPEN. :class:`ActivityHeartbeatTimeoutError` is one.
            SessionFailedError: The session failed, before or while the activity ran (``cause``).
            SessionClosedError: The session was already completed.
            SessionCompletedError: The session was completed while the activity ran.
            ActivityTimeoutError: ``start_to_close_timeout`` passed.
            MessageTooLargeError: The input is over the client's (or the server's) message-size
                limit; nothing was sent. (A result over it is an ``ActivityError`` of type
                ``"ResultTooLarge"``.)
            WorkerBackloggedError: The worker has too much queued that it has not read yet.
            WorkerDetachedError: The worker went away while the activity ran (outcome unknown);
                the session stays OPEN and waits for the worker (``reattach_timeout``).
            ServerShuttingDownError, RPCError (``UNAVAILABLE``): The server stopped or the connection
                broke while the activity ran: the outcome is unknown (it may have run). A call made
                while the server is down, restarting or draining before a restart (SIGTERM) waits for
                it instead (within the timeout); an activity already running when a server drains
                finishes there.
        """
        if isinstance(activity, str):
            activity_type, hint = activity, result_type
        else:
            activity_type = _activity_name(activity)
            hint = result_type if result_type is not None else activity_hints(activity).result
        self._raise_if_ended(in_flight=False)
        timeout = to_seconds(start_to_close_timeout)
        request = session_service_pb2.ExecuteActivityRequest(
            session_id=self.id,
            activity_type=activity_type,
            input=self._client.converter.encode_args(args),
            start_to_close_timeout=duration_to_proto(start_to_close_timeout),
            headers=dict(headers or {}),
        )
        if heartbeat_timeout is not None:
            request.heartbeat_timeout.CopyFrom(duration_to_proto(heartbeat_timeout))
        attempt = 1
        while True:
            if retry_policy is not None:
                request.attempt = attempt
            try:
                return await self._attempt(request, activity_type, timeout, hint, attempt)
            except ActivityError as err:
                if retry_policy is None or not retry_policy.retries(attempt, err.type, err.non_retryable):
                    raise
                delay = retry_policy.delay(attempt)
                logger.debug("activity %s attempt %d failed (%s); retrying in %.3g s", activity_type, attempt, err,
                             delay)
                if err._heartbeat_payload is not None:
                    request.heartbeat_details.CopyFrom(err._heartbeat_payload)
            await self._sleep_while_open(delay)
            attempt += 1

    async def _attempt(
        self, request: session_service_pb2.ExecuteActivityRequest, activity_type: str, timeout: float, hint: Any,
        attempt: int,
    ) -> Any:
        self._check_size(request)  # per attempt: a retry carries the last heartbeat details
        with _tracing.client_span(
            "ExecuteActivity", session_id=self.id, activity_type=activity_type, worker_id=self._info.worker.worker_id
        ) as span:
            try:
                response = await self._execute(request, timeout)
            except SessiondError as err:
                _tracing.fail(span, err.reason or type(err).__name__, str(err), err.code)
                raise
            try:
                return self._outcome(activity_type, response, hint, attempt)
            except ActivityError as err:
                _tracing.fail(span, err.reason, str(err))
                raise

    async def _sleep_while_open(self, delay: float) -> None:
        """Wait ``delay`` seconds between attempts; a session that ends meanwhile raises at once."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._ended.wait()
        self._raise_if_ended(in_flight=False)

    async def _execute(self, request: session_service_pb2.ExecuteActivityRequest,
                       timeout: float) -> session_service_pb2.ExecuteActivityResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0) + self._client.default_rpc_timeout
        backoff = Backoff(0.05, 1.0)
        while True:
            try:
                return await self._execute_once(request, deadline)
            except RecoveringError:
                # A restarted server has not recovered the session yet: the task was never sent,
                # so asking again is safe, until the deadline.
                delay = backoff.next_delay() + 0.05
                if loop.time() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)

    async def _execute_once(self, request: session_service_pb2.ExecuteActivityRequest,
                            deadline: float) -> session_service_pb2.ExecuteActivityResponse:
        # The server answers ACTIVITY_TIMEOUT at start_to_close; the RPC deadline only backs that up.
        hints = self._client._owners
        direct = hints.stub_for(self.id) if hints.enabled else None
        call = (direct or self._client.stub).ExecuteActivity(
            request,
            timeout=max(deadline - asyncio.get_running_loop().time(), 0.001),
            metadata=_tracing.with_trace_context(self._client._metadata),
            wait_for_ready=direct is None,
        )
        rpc = asyncio.ensure_future(_await_call(call))
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            done, _ = await asyncio.wait({rpc, ended}, return_when=asyncio.FIRST_COMPLETED)
            if rpc not in done:
                # The watch saw the session end first: stop waiting for the worker's answer.
                self._raise_if_ended(in_flight=True)
            try:
                response: session_service_pb2.ExecuteActivityResponse = rpc.result()
            except SessiondError as err:
                if direct is not None and not err.reason:
                    hints.failed(self.id)  # the hinted replica did not answer: back to the client's channel
                self._note_verdict(err)
                raise
            if hints.enabled:
                hints.note(self.id, await call.trailing_metadata())
        finally:
            if not rpc.done():
                call.cancel()  # given up (session ended, or we were cancelled): free the server side too
            for task in (rpc, ended):
                task.cancel()
            await asyncio.gather(rpc, ended, return_exceptions=True)
        return response

    async def complete(self) -> SessionInfo:
        """Complete the session now: free the worker slot and cancel its running activities.

        Idempotent, and a no-op on a session that already FAILED or CLOSED. The context manager
        calls this on exit; call it earlier to release the worker sooner.
        """
        response = await self._client._unary(
            self._client.stub.CompleteSession,
            session_service_pb2.CompleteSessionRequest(session_id=self.id),
            retry=True, session_id=self.id, route=lambda stub: stub.CompleteSession,
        )
        self._apply(SessionInfo._from_proto(response.session))
        return self._info

    # -- internals -------------------------------------------------------------------------------

    def _check_size(self, request: session_service_pb2.ExecuteActivityRequest) -> None:
        limit = self._client.max_message_size
        variable = payload_bytes(request.input) + map_bytes(request.headers) + len(request.activity_type) + len(self.id)
        if request.HasField("heartbeat_details"):
            variable += payload_bytes(request.heartbeat_details)
        size = oversize(request, variable, limit)
        if size:
            raise MessageTooLargeError(
                f"the activity input is {size} bytes encoded, over the max_message_size of {limit} bytes",
                code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                metadata={"size": str(size), "limit": str(limit), "session_id": self.id},
            )

    def _outcome(self, activity_type: str, response: session_service_pb2.ExecuteActivityResponse, hint: Any = None,
                 attempt: int = 1) -> Any:
        converter = self._client.converter
        which = response.WhichOneof("outcome")
        if which == "result":
            try:
                return converter.from_payload(response.result, hint)
            except (TypeError, ValueError) as exc:
                # The activity ran and returned: say which result did not fit which type.
                raise TypeError(f"cannot decode the result of activity {activity_type!r} as "
                                f"{getattr(hint, '__name__', hint)}: {exc}") from exc
        if which not in ("failure", "heartbeat_timeout"):
            return None
        failure = response.failure if which == "failure" else response.heartbeat_timeout
        heartbeat_payload = response.heartbeat_details if response.HasField("heartbeat_details") else None
        error_class = ActivityError if which == "failure" else ActivityHeartbeatTimeoutError
        error = error_class(
            failure.message,
            type=failure.type,
            non_retryable=failure.non_retryable,
            details=_decode_quietly(converter, failure.details) if failure.HasField("details") else None,
            activity_type=activity_type,
            session_id=self.id,
            heartbeat_details=None if heartbeat_payload is None else _decode_quietly(converter, heartbeat_payload),
            attempt=attempt,
        )
        error._heartbeat_payload = heartbeat_payload
        raise error

    def _raise_if_ended(self, *, in_flight: bool) -> None:
        info = self._info
        if info.state is SessionState.FAILED:
            failure = info.failure or SessionFailure(FailureCause.UNSPECIFIED, "")
            raise SessionFailedError(
                f"session {info.session_id} failed: {failure.cause.name}"
                + (f" ({failure.message})" if failure.message else ""),
                cause=failure.cause,
                session_id=info.session_id,
                in_flight=in_flight,
            )
        if info.state is SessionState.CLOSED:
            if in_flight:
                raise SessionCompletedError(
                    f"session {info.session_id} was completed while the activity ran",
                    metadata={"session_id": info.session_id},
                )
            raise SessionClosedError(f"session {info.session_id} is closed", metadata={"session_id": info.session_id})

    def _note_verdict(self, err: SessiondError) -> None:
        """Learn from an RPC verdict that the session ended, before the watch reports it."""
        if isinstance(err, SessionFailedError) and not self._ended.is_set():
            failure = SessionFailure(err.cause, err.message)
            self._apply(_with_state(self._info, SessionState.FAILED, failure))
        elif isinstance(err, SessionClosedError | SessionCompletedError) and not self._ended.is_set():
            self._apply(_with_state(self._info, SessionState.CLOSED, None))

    def _apply(self, info: SessionInfo) -> None:
        # Terminal states are final: a late or reordered report never reopens the session.
        if self._ended.is_set() and not info.state.is_terminal:
            return
        if self._ended.is_set() and self._info.state is SessionState.FAILED and info.state is SessionState.CLOSED:
            return
        self._info = info
        if info.state.is_terminal:
            self._ended.set()

    def _start_watch(self) -> None:
        if self._watch_task is None and not self._ended.is_set():
            self._watch_task = asyncio.create_task(self._watch(), name=f"sessiond-watch-{self.id}")

    async def _stop_watch(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _watch(self) -> None:
        """Follow the session until it is terminal; resubscribe after transport failures and while
        a restarted server recovers. The open watch is what keeps the session attended (its
        ``caller_timeout``). If no server answers for longer than the recovery window, the session
        is reported FAILED ``SERVER_UNREACHABLE``."""
        backoff = Backoff(0.1, 2.0)
        request = session_service_pb2.WatchSessionRequest(session_id=self.id)
        loop = asyncio.get_running_loop()
        unreachable_since: float | None = None
        while not self._ended.is_set():
            hints = self._client._owners
            direct = hints.stub_for(self.id) if hints.enabled else None
            call = (direct or self._client.stub).WatchSession(request, metadata=self._client._metadata)
            try:
                async for response in call:
                    self._apply(SessionInfo._from_proto(response.session))
                    backoff.reset()
                    unreachable_since = None
            except grpc.aio.AioRpcError as err:
                mapped = _from_rpc_error(err)
                if isinstance(mapped, SessionNotFoundError):
                    # The server no longer knows the session: a restarted server whose recovery
                    # window passed without the worker reporting it (or retention passed unwatched).
                    self._lost(FailureCause.SESSION_LOST, "the server no longer knows this session")
                    return
                if isinstance(mapped, RecoveringError):
                    unreachable_since = None  # a server answered; it is waiting for the session's worker
                else:
                    transient = err.code() in TRANSIENT_CODES and not mapped.reason
                    if direct is not None and transient:
                        hints.failed(self.id)  # the hinted replica did not answer: back to the client's channel
                    if not (transient or isinstance(mapped, ServerShuttingDownError)):
                        logger.warning("watch of session %s stopped: %s", self.id, mapped)
                        return
                    if unreachable_since is None:
                        unreachable_since = loop.time()
                    elif loop.time() - unreachable_since > self._client.recovery_window:
                        self._lost(
                            FailureCause.SERVER_UNREACHABLE,
                            f"no server answered for {loop.time() - unreachable_since:.0f} s "
                            f"(recovery window {self._client.recovery_window:g} s)",
                        )
                        return
                logger.debug("watch of session %s interrupted (%s); resubscribing", self.id, err.code().name)
            finally:
                call.cancel()
            if not self._ended.is_set():
                await asyncio.sleep(backoff.next_delay())

    def _lost(self, cause: FailureCause, message: str) -> None:
        self._apply(_with_state(self._info, SessionState.FAILED, SessionFailure(cause, message)))

    async def _finish(self, *, raise_errors: bool) -> None:
        """Complete the session (unless already terminal) and stop the watch."""
        try:
            if not self._ended.is_set():
                await self.complete()
        except SessionNotFoundError:
            pass  # gone already: nothing holds a slot
        except SessiondError as err:
            if raise_errors:
                raise
            logger.warning("could not complete session %s on exit: %s", self.id, err)
        finally:
            await self._stop_watch()


def _decode_quietly(converter: PayloadConverter, payload: session_pb2.Payload) -> Any:
    """Decode details; undecodable details must not hide the failure itself (the raw payload is kept)."""
    try:
        return converter.from_payload(payload)
    except Exception:
        return payload


async def _await_call(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        raise _from_rpc_error(err) from err


def _with_state(info: SessionInfo, state: SessionState, failure: SessionFailure | None) -> SessionInfo:
    return dataclasses.replace(info, state=state, failure=failure)


class SessionContext:
    """The async context manager :meth:`SessionClient.create_session` returns.

    ``__aenter__`` places the session and returns the :class:`Session`; ``__aexit__`` completes
    it, also when the block raised or was cancelled (completion is shielded from cancellation and
    finishes in the background if the caller is cancelled meanwhile).
    """

    def __init__(self, client: SessionClient, open_session: Callable[[], Awaitable[SessionInfo]]) -> None:
        """Bind the RPC that places the session; nothing happens until ``async with``."""
        self._client = client
        self._open = open_session
        self._session: Session | None = None
        self._token: Token[Session | None] | None = None
        self._entered = False

    async def __aenter__(self) -> Session:
        if self._entered:
            raise RuntimeError("a session context manager can be entered only once")
        self._entered = True
        outer = _current_session.get()
        if outer is not None and not outer._ended.is_set():
            raise SessionAlreadyOpenError(
                f"found existing open session {outer.id} in the context; complete it first",
                metadata={"session_id": outer.id},
            )
        info = await self._open()
        session = Session(self._client, info)
        session._start_watch()
        self._session = session
        self._token = _current_session.set(session)
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if self._token is not None:
            # Exiting in another context than we entered (unusual) leaves that context alone.
            with contextlib.suppress(ValueError):
                _current_session.reset(self._token)
            self._token = None
        if session is None:
            return
        finishing = asyncio.ensure_future(session._finish(raise_errors=exc_type is None))
        try:
            await asyncio.shield(finishing)
        except asyncio.CancelledError:
            # Cancelled while completing: let the completion run to its end; the client awaits it on close.
            self._client._keep(finishing)
            raise
