"""The worker side: :class:`SessionWorker` holds sessions and runs their activities.

One ``WorkerHeartbeat`` stream per worker and task queue carries everything. The worker:

* registers (re-using its worker id on every reconnect, so recreate tokens keep pointing at it);
* adopts the heartbeat interval from every server message and sends a ``Heartbeat`` whenever it
  has been silent that long (any message counts);
* holds the sessions the server starts on it and rejects work for any other (fencing);
* runs activities: ``async def`` ones as tasks on the loop, plain functions in a thread pool; all of
  them can read :func:`sessiond_client.activity.info` and learn of cancellation;
* reports every result at once through a single writer (grpc allows one write at a time), and a
  result over the message-size limit its server announced as a ``ResultTooLarge`` failure of that
  activity instead (the server's transport would end the whole stream for it);
* fences: when it has heard nothing from the server for a session's heartbeat_timeout, it stops
  that session's activities until the server speaks again (see ``_fencing``);
* on a broken stream cancels its running activities (their callers were told the outcome is
  unknown) but keeps its sessions while it reconnects with jittered exponential backoff, for the
  server's recovery window (or a session's longer ``reattach_timeout``); it reports them when it
  registers again, and holds exactly what the server gives back (``Registered``), telling user
  code through ``on_session_reattached``;
* refuses to fight over its worker_id: a live registration of the same id by another process is
  retried only while it may turn stale, and a stream replaced by another process is not resumed;
* on shutdown says goodbye: with drain it keeps its open sessions until they complete or the grace
  period passes, then half-closes; the first SIGTERM/SIGINT drains, a second one stops at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import grpc
import grpc.aio
from opentelemetry.trace import Span

from sessiond_client import _tracing
from sessiond_client._activity import ActivityInfo, _activity_name, _ActivityContext, _current
from sessiond_client._connection import ConnectionConfig
from sessiond_client._converter import DefaultPayloadConverter, PayloadConverter
from sessiond_client._errors import ApplicationError, WorkerIdInUseError, WorkerReplacedError, _from_rpc_error
from sessiond_client._fencing import SERVER_UNREACHABLE, SERVER_UNREACHABLE_FAILURE, SESSION_FENCED, Fence
from sessiond_client._heartbeat import ActivityHeartbeats
from sessiond_client._limits import RESULT_TOO_LARGE, UNANNOUNCED_MAX_MESSAGE_SIZE, oversize, payload_bytes
from sessiond_client._retry import Backoff
from sessiond_client._time import Duration, duration_from_proto, to_seconds
from sessiond_client._typehints import ActivityHints, activity_hints
from sessiond_client._types import SessionInfo, SessionState
from sessiond_client.api.v1 import session_pb2, session_service_pb2_grpc, worker_pb2

logger = logging.getLogger("sessiond_client.worker")

# Errors that a reconnect cannot fix: bad credentials or a request the server will always reject.
_FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# Until the server names an interval (in its first message), heartbeat at the protocol's maximum.
_INITIAL_HEARTBEAT_INTERVAL = 10.0
# The server's default session limit (SPEC §2.3), also this library's.
_DEFAULT_MAX_SESSIONS = 1000
# After our half-close the server ends the stream; if it does not, stop waiting after this long.
_HALF_CLOSE_TIMEOUT = 10.0
# How long to wait for the server's GoodbyeAck before trusting our own view of held sessions.
_GOODBYE_ACK_TIMEOUT = 10.0
# How long run() waits, at exit, for cancelled activity tasks to unwind.
_ACTIVITY_UNWIND_TIMEOUT = 5.0
# The fencing check wakes at least this often (seconds), to see sessions that arrived meanwhile.
_FENCE_CHECK_MAX_DELAY = 1.0
# Until a server announces its recovery window, hold sessions this long after a broken stream.
_DEFAULT_RECOVERY_WINDOW = 30.0

# The worker's channel has a subchannel pool of its own (so its own TCP connection, not one shared
# with the process's other channels to the same target). Measured: about a fifth less worker CPU per
# activity at 64 in flight than with the process-wide pool (bench/notes.md, issue 15). A process that
# runs several workers, or a client beside its worker, opens one connection for each.
_WORKER_CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (("grpc.use_local_subchannel_pool", 1),)

ReattachHook = Callable[[SessionInfo], "bool | Awaitable[bool]"]

SESSION_NOT_HELD = "SessionNotHeld"
ACTIVITY_NOT_REGISTERED = "ActivityNotRegistered"
PAYLOAD_ERROR = "PayloadError"


class _Running:
    """One activity execution in progress (in ``table``, the worker's running activities, until it ends)."""

    __slots__ = ("activity_id", "context", "session_id", "started", "table", "task")

    def __init__(self, activity_id: str, session_id: str, context: _ActivityContext,
                 table: dict[str, _Running]) -> None:
        self.activity_id = activity_id
        self.session_id = session_id
        self.context = context
        self.table = table
        # Set by the wrapper's first step; its ``finally`` takes the execution out of ``table``.
        self.started = False
        self.task: asyncio.Task[None]  # set right after, by the worker that creates the task

    def cancel(self, reason: str) -> None:
        # The flag is for sync activities (a thread cannot be interrupted) and tells the wrapper not
        # to report; cancelling the task interrupts async activities and the wait on a thread.
        self.context.cancel(reason)
        self.task.cancel()
        if not self.started:
            # Cancelled before its first step: its body, and so the finally that forgets it, never runs.
            self.forget()

    def forget(self) -> None:
        if self.table.get(self.activity_id) is self:
            del self.table[self.activity_id]


class SessionWorker:
    """A worker process's connection to sessiond for one task queue.

    Example::

        @activity.defn
        async def download(url: str) -> str: ...

        def process(path: str) -> str:  # sync: runs in a thread, may poll activity.is_cancelled()
            ...

        worker = SessionWorker("127.0.0.1:50051", "fileprocessing", [download, process],
                               max_concurrent_sessions=4)
        await worker.run(handle_signals=True)  # until SIGTERM (drain) or worker.shutdown()
    """

    def __init__(
        self,
        target: str,
        task_queue: str,
        activities: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
        *,
        max_concurrent_sessions: int = _DEFAULT_MAX_SESSIONS,
        worker_id: str | None = None,
        identity: str | None = None,
        host_name: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        auth_token: str | None = None,
        auth_token_file: str | os.PathLike[str] | None = None,
        converter: PayloadConverter | None = None,
        activity_executor: concurrent.futures.Executor | None = None,
        max_activity_threads: int = 100,
        shutdown_grace: Duration | None = timedelta(minutes=5),
        reconnect_initial_delay: Duration = 0.1,
        reconnect_max_delay: Duration = 5.0,
        channel_options: tuple[tuple[str, int | str], ...] = (),
        on_session_reattached: ReattachHook | None = None,
        capacities: Mapping[str, int] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Configure the worker; nothing connects until :meth:`run`.

        Args:
            target: sessiond's address, for example ``"127.0.0.1:50051"``.
            task_queue: The queue this worker serves.
            activities: ``{name: callable}``, or callables named by ``activity.defn`` / ``__name__``.
            max_concurrent_sessions: Hard limit of sessions held at once (the server enforces it).
            worker_id: Stable id (lets recreate tokens survive reconnects across processes); default:
                the server assigns one, kept for this process's reconnects.
            identity: Free-form identity; default ``pid@hostname``.
            host_name: Host name shown to callers; default ``socket.gethostname()``.
            tls: Connect with TLS (as for ``SessionClient``).
            root_certificates: PEM CA bundle to trust (TLS).
            private_key: PEM client key (mTLS, with ``certificate_chain``).
            certificate_chain: PEM client certificate chain (mTLS).
            auth_token: The worker role's bearer token.
            auth_token_file: A file whose first line is the bearer token, read again at every
                (re)connect, so a rotated token is picked up without a restart. Not with ``auth_token``.
            converter: Payload converter (must match the callers').
            activity_executor: Executor for sync activities; default: a thread pool owned by the worker.
            max_activity_threads: Size of the default thread pool.
            shutdown_grace: How long a draining shutdown waits for open sessions; ``None`` = no limit.
            reconnect_initial_delay: First reconnect backoff bound.
            reconnect_max_delay: Cap of the reconnect backoff.
            channel_options: Extra grpc channel options.
            on_session_reattached: Called with the :class:`SessionInfo` of every session this worker
                gets back at a registration: after this process restarted with the same
                ``worker_id`` (sessions created with a ``reattach_timeout``), after its stream broke,
                or after the server restarted. Return ``False`` (or raise) to give the session back
                (it then FAILS ``WORKER_LOST``), for example when its local state is gone. May be
                an ``async`` function. Without it every session is kept.
            capacities: What the worker can hold at once besides sessions, e.g. ``{"gpu": 2}``;
                every amount is a hard limit the server enforces. A ``"sessions"`` entry is the
                session limit (instead of ``max_concurrent_sessions``).
            labels: Labels that session selectors match, e.g. ``{"zone": "a"}``.
        """
        if not task_queue:
            raise ValueError("task_queue must not be empty")
        capacities = dict(capacities or {})
        for name, amount in capacities.items():
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                raise ValueError(f"capacities[{name!r}] must be a non-negative int, got {amount!r}")
        if "sessions" in capacities:
            sessions = capacities.pop("sessions")
            if max_concurrent_sessions not in (sessions, _DEFAULT_MAX_SESSIONS):
                raise ValueError(f"capacities['sessions'] ({sessions}) and max_concurrent_sessions "
                                 f"({max_concurrent_sessions}) disagree: give one")
            max_concurrent_sessions = sessions
        if max_concurrent_sessions < 1:
            raise ValueError("max_concurrent_sessions must be at least 1")
        for key, value in (labels or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"labels must map strings to strings, got {key!r}: {value!r}")
        self._connection = ConnectionConfig(
            target=target,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            auth_token=auth_token,
            auth_token_file=auth_token_file,
            channel_options=channel_options,
        )
        self._task_queue = task_queue
        self._activities = _activity_table(activities)
        # Decided once: inspecting a callable per task is measurable on the activity path.
        self._async_activities = frozenset(name for name, fn in self._activities.items() if _is_async(fn))
        # Each activity's type hints by name, read at its first run (a dict lookup per task, not
        # activity_hints()'s cache keyed by the function).
        self._hints: dict[str, ActivityHints] = {}
        self._max_sessions = max_concurrent_sessions
        self._capacities = capacities
        self._labels = dict(labels or {})
        self._worker_id = worker_id or None
        self._host_name = host_name or socket.gethostname()
        self._identity = identity or f"{os.getpid()}@{self._host_name}"
        self._converter = converter or DefaultPayloadConverter()
        self._executor = activity_executor
        self._max_threads = max_activity_threads
        self._grace = None if shutdown_grace is None else to_seconds(shutdown_grace)
        self._backoff = Backoff(to_seconds(reconnect_initial_delay), to_seconds(reconnect_max_delay))

        self._sessions: dict[str, SessionInfo] = {}
        # The sessions as the server sent them: reported back verbatim when registering again.
        self._records: dict[str, session_pb2.Session] = {}
        # After a broken stream: until when each held session is kept while reconnecting.
        self._hold_until: dict[str, float] = {}
        self._recovery_window = _DEFAULT_RECOVERY_WINDOW
        self._instance_id = str(uuid.uuid4())
        self._on_reattached = on_session_reattached
        self._offers: set[asyncio.Task[None]] = set()
        self._replaced: str | None = None
        self._in_use_until: float | None = None
        self._running: dict[str, _Running] = {}
        self._outbox: asyncio.Queue[worker_pb2.WorkerHeartbeatRequest | None] | None = None
        self._interval = _INITIAL_HEARTBEAT_INTERVAL
        # The server's last heartbeat_interval as sent (seconds, nanos): every message carries it,
        # and it is converted only when it changes.
        self._interval_sent: tuple[int, int] | None = None
        self._interval_changed = asyncio.Event()
        self._last_send = 0.0
        # Fencing: when the server last spoke; and when we last sent a Heartbeat (its answer counts).
        self._fence = Fence(0.0)
        self._last_ping = 0.0
        self._max_message_size = UNANNOUNCED_MAX_MESSAGE_SIZE
        self._server_incarnation: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._registered = asyncio.Event()
        self._goodbye_acked = asyncio.Event()
        self._shutdown_requested = asyncio.Event()
        self._force = asyncio.Event()
        self._drain = True
        self._started = False
        self._signals: list[signal.Signals] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # The thread run() runs on (None before): activity heartbeats from other threads hop to it.
        self._loop_thread: int | None = None

    # -- public ---------------------------------------------------------------------------------

    @property
    def task_queue(self) -> str:
        """The queue this worker serves."""
        return self._task_queue

    @property
    def worker_id(self) -> str | None:
        """The worker id in force (the supplied one, or the one the server assigned at registration)."""
        return self._worker_id

    @property
    def identity(self) -> str:
        """The identity this worker declares."""
        return self._identity

    @property
    def capacities(self) -> Mapping[str, int]:
        """What this worker declares it can hold, by resource (``sessions`` included)."""
        return {**self._capacities, "sessions": self._max_sessions}

    @property
    def labels(self) -> Mapping[str, str]:
        """The labels this worker declares."""
        return dict(self._labels)

    @property
    def held_sessions(self) -> frozenset[str]:
        """Ids of the sessions this worker holds right now."""
        return frozenset(self._sessions)

    @property
    def sessions(self) -> Mapping[str, SessionInfo]:
        """The sessions this worker holds right now, by id (a copy)."""
        return dict(self._sessions)

    @property
    def server_incarnation(self) -> str | None:
        """The incarnation id of the server the worker last heard from."""
        return self._server_incarnation

    async def wait_registered(self) -> str:
        """Wait until the worker has registered (on its current or next stream); return its worker id."""
        await self._registered.wait()
        assert self._worker_id is not None
        return self._worker_id

    async def run(self, *, handle_signals: bool = False) -> None:
        """Serve until :meth:`shutdown` (or, with ``handle_signals``, SIGTERM/SIGINT) completes.

        Reconnects by itself when the stream breaks. Returns after a clean shutdown.

        Raises:
            UnauthenticatedError, PermissionDeniedError, InvalidArgumentError: The server rejected
                the worker in a way no reconnect can fix.
            WorkerIdInUseError: Another live process is registered with this ``worker_id`` and did
                not turn stale within its staleness period.
            WorkerReplacedError: Another process registered with this ``worker_id`` after this one
                went silent (frozen, cut off); this process must not carry on as that worker.
        """
        if self._started:
            raise RuntimeError("SessionWorker.run() can be called only once")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if handle_signals:
            self.install_signal_handlers()
        owned_executor: concurrent.futures.ThreadPoolExecutor | None = None
        if self._executor is None:
            owned_executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._max_threads, thread_name_prefix="sessiond-activity"
            )
            self._executor = owned_executor
        channel = self._connection.open_channel(defaults=_WORKER_CHANNEL_OPTIONS)
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        try:
            while not self._shutdown_requested.is_set():
                try:
                    await self._serve_stream(stub)
                    if not self._shutdown_requested.is_set() and self._replaced is None:
                        logger.info("server ended the worker stream; reconnecting")
                except grpc.aio.AioRpcError as err:
                    mapped = _from_rpc_error(err)
                    if isinstance(mapped, WorkerIdInUseError):
                        if not self._may_retry_in_use(mapped):
                            raise mapped from err
                    elif err.code() in _FATAL_CODES:
                        raise mapped from err
                    else:
                        logger.warning("worker stream broke (%s: %s); reconnecting", err.code().name, err.details())
                finally:
                    self._stream_ended()
                if self._replaced is not None:
                    self._drop_all_sessions("WORKER_REPLACED")
                    raise WorkerReplacedError(self._replaced)
                if self._shutdown_requested.is_set():
                    break
                delay = self._backoff.next_delay()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._shutdown_requested.wait()
        finally:
            self.remove_signal_handlers()
            for offer in list(self._offers):
                offer.cancel()
            await self._unwind_activities()
            await channel.close(None)
            if owned_executor is not None:
                owned_executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            logger.info("worker %s stopped", self._worker_id)

    def shutdown(self, *, drain: bool = True, grace: Duration | None = None) -> None:
        """Ask the worker to stop; :meth:`run` returns when it has. Call from the event loop's thread.

        Args:
            drain: Keep open sessions until they complete (no new ones land here), at most the
                grace period; ``False`` fails them at once with WORKER_SHUTDOWN. Calling again with
                ``drain=False`` while draining stops at once.
            grace: Overrides ``shutdown_grace`` for this shutdown.
        """
        if grace is not None:
            self._grace = to_seconds(grace)
        if not self._shutdown_requested.is_set():
            self._drain = drain
            self._shutdown_requested.set()
        elif not drain:
            self._force.set()

    def install_signal_handlers(self, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Make the first of ``signals`` drain the worker and a second one stop it at once.

        Must be called in the running loop (``run(handle_signals=True)`` does it). Unix only.
        """
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
            self._signals.append(sig)

    def remove_signal_handlers(self) -> None:
        """Undo :meth:`install_signal_handlers`."""
        if self._loop is None:
            return
        for sig in self._signals:
            self._loop.remove_signal_handler(sig)
        self._signals.clear()

    # -- the stream -----------------------------------------------------------------------------

    async def _serve_stream(self, stub: session_service_pb2_grpc.SessionServiceAsyncStub) -> None:
        """Run one stream from registration to its end; returns on EOF, raises AioRpcError on failure."""
        call = stub.WorkerHeartbeat(None, metadata=self._connection.call_metadata())
        outbox: asyncio.Queue[worker_pb2.WorkerHeartbeatRequest | None] = asyncio.Queue()
        self._outbox = outbox
        self._registered.clear()
        self._goodbye_acked.clear()
        self._expire_held()
        self._fence = Fence(asyncio.get_running_loop().time())
        self._send(
            worker_pb2.WorkerHeartbeatRequest(
                register=worker_pb2.RegisterWorker(
                    task_queue=self._task_queue,
                    worker_id=self._worker_id or "",
                    identity=self._identity,
                    host_name=self._host_name,
                    max_concurrent_sessions=self._max_sessions,
                    capacities=self._capacities,
                    labels=self._labels,
                    held_sessions=list(self._records.values()),
                    held_from_incarnation=self._server_incarnation or "",
                    instance_id=self._instance_id,
                )
            )
        )
        helpers = [
            asyncio.create_task(self._write_loop(call, outbox), name="sessiond-worker-writer"),
            asyncio.create_task(self._heartbeat_loop(), name="sessiond-worker-heartbeat"),
            asyncio.create_task(self._goodbye_loop(call), name="sessiond-worker-goodbye"),
            asyncio.create_task(self._fence_loop(), name="sessiond-worker-fence"),
        ]
        try:
            while True:
                try:
                    message = await call.read()
                except asyncio.CancelledError:
                    # Our own call.cancel() after an unanswered half-close ends the stream; a
                    # cancellation of this task must still propagate.
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    return
                if not isinstance(message, worker_pb2.WorkerHeartbeatResponse):
                    return  # EOF: the server ended the stream
                self._on_message(message)
        finally:
            self._outbox = None
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            call.cancel()

    async def _write_loop(
        self,
        call: grpc.aio.StreamStreamCall[worker_pb2.WorkerHeartbeatRequest, worker_pb2.WorkerHeartbeatResponse],
        outbox: asyncio.Queue[worker_pb2.WorkerHeartbeatRequest | None],
    ) -> None:
        # The only writer of the stream: grpc.aio allows one outstanding write per call.
        try:
            while True:
                # Without a coroutine when a message is waiting (at load, the usual case).
                message = outbox.get_nowait() if outbox.qsize() else await outbox.get()
                if message is None:
                    await call.done_writing()
                    return
                await call.write(message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as err:
            # The reader sees the same failure and decides what to do; the writer just stops.
            logger.debug("worker stream write failed: %r", err)

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._outbox is not None:
            # Due after an interval of silence (any message counts as a heartbeat), or after an
            # interval without a word from the server: its HeartbeatAck keeps our sessions
            # confirmed (fencing) even while we only send results.
            due = min(self._last_send, max(self._fence.last_heard, self._last_ping)) + self._interval
            delay = due - loop.time()
            if delay <= 0:
                self._last_ping = loop.time()
                self._send(worker_pb2.WorkerHeartbeatRequest(heartbeat=worker_pb2.Heartbeat()))
                continue
            # Woken early when the server changes the interval (a shorter one must apply at once).
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races
            # its timeout, and this loop must stop when the stream ends.
            self._interval_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._interval_changed.wait()

    async def _goodbye_loop(
        self,
        call: grpc.aio.StreamStreamCall[worker_pb2.WorkerHeartbeatRequest, worker_pb2.WorkerHeartbeatResponse],
    ) -> None:
        await self._shutdown_requested.wait()
        drain = self._drain
        held = len(self._sessions)
        logger.info("worker %s saying goodbye (drain=%s, %d sessions held)", self._worker_id, drain, held)
        self._send(worker_pb2.WorkerHeartbeatRequest(goodbye=worker_pb2.Goodbye(drain=drain)))
        if drain:
            loop = asyncio.get_running_loop()
            deadline = None if self._grace is None else loop.time() + self._grace
            # A SessionStarted the server sent just before reading our goodbye may still be on the
            # wire: being idle right now is not enough to leave. The GoodbyeAck is the marker (the
            # stream is ordered): once it arrived, no SessionStarted can follow.
            force = asyncio.ensure_future(self._force.wait())
            acked = asyncio.ensure_future(self._goodbye_acked.wait())
            try:
                wait = _GOODBYE_ACK_TIMEOUT if self._grace is None else min(_GOODBYE_ACK_TIMEOUT, self._grace)
                await asyncio.wait({force, acked}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if not acked.done():
                    logger.warning("worker %s got no goodbye acknowledgement; trusting its own view", self._worker_id)
                while not force.done():
                    idle = asyncio.ensure_future(self._idle.wait())
                    remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
                    try:
                        await asyncio.wait({idle, force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        idle.cancel()
                    if not self._sessions or (deadline is not None and loop.time() >= deadline):
                        break
            finally:
                force.cancel()
                acked.cancel()
            if self._sessions:
                # Grace passed or a second signal: fail what is left now, with an explicit cause.
                logger.warning("worker %s stopping with %d open sessions", self._worker_id, len(self._sessions))
                self._send(worker_pb2.WorkerHeartbeatRequest(goodbye=worker_pb2.Goodbye(drain=False)))
        self._drop_all_sessions("WORKER_SHUTDOWN")
        if self._outbox is not None:
            self._outbox.put_nowait(None)  # half-close: the server ends the stream in answer
        await asyncio.sleep(_HALF_CLOSE_TIMEOUT)
        logger.warning("server did not end the worker stream after goodbye; closing it")
        call.cancel()

    async def _fence_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._outbox is not None:
            now = loop.time()
            for session_id in self._fence.due(now, self._sessions):
                self._fence_session(session_id, now - self._fence.last_heard)
            due = self._fence.next_due(self._sessions)
            delay = _FENCE_CHECK_MAX_DELAY if due is None else min(max(due - now, 0.0), _FENCE_CHECK_MAX_DELAY)
            await asyncio.sleep(delay)

    def _fence_session(self, session_id: str, silent: float) -> None:
        """Stop the session's activities: the server may have failed it, and its caller may run the
        work elsewhere. Each stopped activity is reported failed, should the server read it."""
        stopped = [(activity_id, running) for activity_id, running in self._running.items()
                   if running.session_id == session_id]
        logger.warning("worker %s heard nothing from sessiond for %.1f s: fencing session %s (%d activities stopped)",
                       self._worker_id, silent, session_id, len(stopped))
        for activity_id, running in stopped:
            running.cancel(SERVER_UNREACHABLE)
            self._send_outcome(activity_id, session_id, failure=session_pb2.ActivityFailure(
                type=SERVER_UNREACHABLE_FAILURE,
                message=f"the worker heard nothing from sessiond for {silent:.1f} s (the session's "
                "heartbeat_timeout) and stopped the activity",
            ))

    def _send(self, message: worker_pb2.WorkerHeartbeatRequest) -> None:
        # The loop run() runs on, read once (asyncio.get_running_loop() costs a getpid() syscall on
        # 3.11); the fallback is for a worker driven without run() (tests, bench.inprocess_libworker).
        self._last_send = (self._loop or asyncio.get_running_loop()).time()
        if self._outbox is None:
            logger.debug("dropping %s: no stream", message.WhichOneof("message"))
            return
        self._outbox.put_nowait(message)

    # -- server messages ------------------------------------------------------------------------

    def _on_message(self, message: worker_pb2.WorkerHeartbeatResponse) -> None:
        # Any message confirms every session still held (the stream is ordered: a session the
        # server failed was dropped by an earlier SessionEnded).
        if self._fence.heard((self._loop or asyncio.get_running_loop()).time()):
            logger.info("worker %s hears sessiond again: its sessions are confirmed", self._worker_id)
        if message.HasField("heartbeat_interval"):
            sent = message.heartbeat_interval
            raw = (sent.seconds, sent.nanos)
            if raw != self._interval_sent:
                self._interval_sent = raw
                interval = duration_from_proto(sent).total_seconds()
                if interval > 0 and interval != self._interval:
                    self._interval = interval
                    self._interval_changed.set()
        incarnation = message.server_incarnation
        if incarnation:
            self._server_incarnation = incarnation
        kind = message.WhichOneof("message")
        if kind == "activity_task":  # first: the message a busy worker gets most
            self._start_activity(message.activity_task)
        elif kind == "registered":
            self._max_message_size = message.registered.max_message_size or UNANNOUNCED_MAX_MESSAGE_SIZE
            self._on_registered(message.registered)
        elif kind == "session_started":
            info = SessionInfo._from_proto(message.session_started.session)
            self._sessions[info.session_id] = info
            self._records[info.session_id] = message.session_started.session
            self._idle.clear()
            logger.debug("holding session %s", info.session_id)
        elif kind == "server_restarting":
            window = message.server_restarting.recovery_window
            self._recovery_window = duration_from_proto(window).total_seconds()
            logger.info(
                "server is restarting; holding %d sessions for up to %.3g s while reconnecting",
                len(self._sessions),
                self._recovery_window,
            )
        elif kind == "worker_replaced":
            self._replaced = message.worker_replaced.message or "replaced by a newer registration"
            logger.error("worker %s was replaced by another process: %s", self._worker_id, self._replaced)
        elif kind == "session_ended":
            ended = message.session_ended
            reason = "SESSION_FAILED" if ended.state == int(SessionState.FAILED) else "SESSION_COMPLETED"
            self._drop_session(ended.session_id, reason)
        elif kind == "goodbye_ack":
            self._goodbye_acked.set()
            logger.debug("goodbye acknowledged; %d sessions to finish", len(message.goodbye_ack.session_ids))
        elif kind == "cancel_activity":
            cancel = message.cancel_activity
            running = self._running.get(cancel.activity_id)
            if running is not None and running.session_id == cancel.session_id:
                running.cancel(cancel.reason or "CANCELLED")

    def _on_registered(self, registered: worker_pb2.Registered) -> None:
        self._worker_id = registered.worker_id or self._worker_id
        if registered.HasField("recovery_window"):
            self._recovery_window = duration_from_proto(registered.recovery_window).total_seconds()
        self._backoff.reset()
        self._in_use_until = None
        # Exactly what the server gave back is held: anything else reported is gone.
        back = {s.session_id: s for s in registered.reattached_sessions}
        for session_id in [sid for sid in self._sessions if sid not in back]:
            self._drop_session(session_id, "SESSION_LOST")
        self._hold_until.clear()
        for session_id, record in back.items():
            self._sessions[session_id] = SessionInfo._from_proto(record)
            self._records[session_id] = record
        if back:
            self._idle.clear()
        self._registered.set()
        logger.info(
            "worker %s registered on %s (task queue %r, heartbeat every %.3g s, %d sessions back)",
            self._worker_id,
            self._connection.target,
            self._task_queue,
            self._interval,
            len(back),
        )
        for session_id in back:
            self._offer(self._sessions[session_id])

    def _offer(self, info: SessionInfo) -> None:
        """Ask the user's hook whether to keep a session this worker got back."""
        hook = self._on_reattached
        if hook is None:
            return
        try:
            verdict = hook(info)
        except Exception:
            logger.exception("on_session_reattached raised for session %s; giving it back", info.session_id)
            self._decline(info.session_id, "on_session_reattached raised")
            return
        if inspect.isawaitable(verdict):
            task = asyncio.ensure_future(self._await_offer(info, verdict))
            self._offers.add(task)
            task.add_done_callback(self._offers.discard)
        elif not verdict:
            self._decline(info.session_id, "on_session_reattached declined it")

    async def _await_offer(self, info: SessionInfo, verdict: Awaitable[bool]) -> None:
        try:
            keep = await verdict
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("on_session_reattached raised for session %s; giving it back", info.session_id)
            keep = False
        if not keep and info.session_id in self._sessions:
            self._decline(info.session_id, "on_session_reattached declined it")

    def _decline(self, session_id: str, reason: str) -> None:
        self._drop_session(session_id, "DECLINED")
        self._send(
            worker_pb2.WorkerHeartbeatRequest(
                decline_session=worker_pb2.DeclineSession(session_id=session_id, reason=reason)
            )
        )

    def _stream_ended(self) -> None:
        """The stream is gone. Activities stop (their callers were told the outcome is unknown), but
        the sessions are kept while reconnecting: a server that stayed up may have them detached
        (``reattach_timeout``), a restarted one adopts what is reported within its recovery window."""
        for running in list(self._running.values()):
            running.cancel("STREAM_BROKEN")
        now = asyncio.get_running_loop().time()
        for session_id, info in self._sessions.items():
            if session_id not in self._hold_until:
                reattach = info.options.reattach_timeout
                keep = max(self._recovery_window, 0.0 if reattach is None else reattach.total_seconds())
                self._hold_until[session_id] = now + keep

    def _expire_held(self) -> None:
        now = asyncio.get_running_loop().time()
        for session_id in [sid for sid, until in self._hold_until.items() if until <= now]:
            logger.warning("dropping session %s: no server took it back in time", session_id)
            self._drop_session(session_id, "SERVER_UNREACHABLE")

    def _may_retry_in_use(self, error: WorkerIdInUseError) -> bool:
        """Retry a WORKER_ID_IN_USE refusal only while the live holder may still turn stale."""
        now = asyncio.get_running_loop().time()
        if self._in_use_until is None:
            stale_after = error.stale_after
            window = 3 * _INITIAL_HEARTBEAT_INTERVAL if stale_after is None else stale_after
            self._in_use_until = now + window + 1.0
            logger.warning(
                "worker_id %s is in use by a live process; retrying for %.3g s in case it is a hung one",
                self._worker_id,
                window + 1.0,
            )
        return now < self._in_use_until

    def _drop_session(self, session_id: str, reason: str) -> None:
        self._fence.forget(session_id)
        self._records.pop(session_id, None)
        self._hold_until.pop(session_id, None)
        if self._sessions.pop(session_id, None) is not None:
            logger.debug("dropped session %s (%s)", session_id, reason)
        for running in list(self._running.values()):
            if running.session_id == session_id:
                running.cancel(reason)
        if not self._sessions:
            self._idle.set()

    def _drop_all_sessions(self, reason: str) -> None:
        self._sessions.clear()
        self._records.clear()
        self._hold_until.clear()
        for running in list(self._running.values()):
            running.cancel(reason)
        self._idle.set()

    # -- activities -----------------------------------------------------------------------------

    def _start_activity(self, task: worker_pb2.ActivityTask) -> None:
        # Each read of a protobuf string field builds a new str: the ids are read once.
        session_id = task.session_id
        session = self._sessions.get(session_id)
        if session is None:
            # Fencing: the server may believe we hold a session we already dropped (or never had).
            self._report_failure(
                task,
                session_pb2.ActivityFailure(
                    type=SESSION_NOT_HELD,
                    message=f"worker {self._worker_id} does not hold session {session_id}",
                    non_retryable=True,
                ),
            )
            return
        if self._fence.is_fenced(session_id):
            # Not confirmed by the server since its silence fenced the session.
            self._report_failure(task, session_pb2.ActivityFailure(
                type=SESSION_FENCED, message=f"session {session_id} is fenced: the server has not confirmed it"))
            return
        fn = self._activities.get(task.activity_type)
        if fn is None:
            self._report_failure(
                task,
                session_pb2.ActivityFailure(
                    type=ACTIVITY_NOT_REGISTERED,
                    message=f"activity {task.activity_type!r} is not registered on this worker "
                    f"(registered: {', '.join(sorted(self._activities)) or 'none'})",
                    non_retryable=True,
                ),
            )
            return
        activity_id = task.activity_id
        if activity_id in self._running:
            return  # a duplicate delivery of a task already running
        loop = self._loop or asyncio.get_running_loop()
        heartbeat_timeout = duration_from_proto(task.heartbeat_timeout) if task.HasField("heartbeat_timeout") else None
        heartbeats = ActivityHeartbeats(
            loop, self._converter,
            None if heartbeat_timeout is None else heartbeat_timeout.total_seconds(),
            functools.partial(self._send_heartbeat, activity_id, session_id), self._loop_thread,
        )
        details = self._previous_details(task) if task.HasField("heartbeat_details") else None
        worker_id = self._worker_id or ""
        # The ActivityInfo is built only if the activity reads it (activity.info()), from what holds now.
        context = _ActivityContext(None, heartbeats, make_info=lambda: self._activity_info(
            task, session, worker_id, heartbeat_timeout, details))
        running = _Running(activity_id, session_id, context, self._running)
        # No done-callback: the wrapper's finally forgets the execution (a callback is one more
        # loop handle per activity), and cancel() does when the task never started.
        running.task = loop.create_task(self._execute(task, fn, context, heartbeats, running),
                                        name=f"sessiond-activity-{activity_id}")
        self._running[activity_id] = running

    @staticmethod
    def _activity_info(task: worker_pb2.ActivityTask, session: SessionInfo, worker_id: str,
                       heartbeat_timeout: timedelta | None, details: Any) -> ActivityInfo:
        return ActivityInfo(
            activity_id=task.activity_id,
            activity_type=task.activity_type,
            session=session,
            start_to_close_timeout=duration_from_proto(task.start_to_close_timeout)
            if task.HasField("start_to_close_timeout") else None,
            headers=dict(task.headers) if task.headers else {},
            worker_id=worker_id,
            attempt=task.attempt or 1,
            heartbeat_timeout=heartbeat_timeout,
            heartbeat_details=details,
            resources=MappingProxyType(dict(task.resources)) if task.resources else session.resources,
        )

    def _previous_details(self, task: worker_pb2.ActivityTask) -> Any:
        try:
            return self._converter.from_payload(task.heartbeat_details)
        except Exception as exc:  # the retry still runs; it just cannot resume
            logger.warning("cannot decode the heartbeat details of activity %s: %s", task.activity_id, exc)
            return None

    def _send_heartbeat(self, activity_id: str, session_id: str, details: session_pb2.Payload | None) -> None:
        if details is not None and payload_bytes(details) > self._max_message_size // 2:
            # The caller's response carries the latest details next to the result: both must fit.
            logger.warning("activity %s: heartbeat details over half the server's max_message_size (%d bytes); "
                           "sending the heartbeat without them", activity_id, self._max_message_size)
            details = None
        self._send(worker_pb2.WorkerHeartbeatRequest(
            activity_heartbeat=worker_pb2.ActivityHeartbeat(activity_id=activity_id, session_id=session_id,
                                                            details=details)))

    async def _execute(self, task: worker_pb2.ActivityTask, fn: Callable[..., Any], context: _ActivityContext,
                       heartbeats: ActivityHeartbeats, running: _Running) -> None:
        running.started = True
        _current.set(context)
        try:
            if _tracing.enabled():
                # Started here so it is current in the executor thread too (the context is copied
                # below). With tracing off not even the span's context manager is built.
                with _tracing.activity_span(task.activity_type, task.headers, session_id=task.session_id,
                                            activity_id=task.activity_id, worker_id=self._worker_id or "") as span:
                    await self._run_activity(task, fn, context, span, heartbeats)
            else:
                await self._run_activity(task, fn, context, None, heartbeats)
        except Exception:
            logger.exception("activity wrapper crashed")
        finally:
            heartbeats.close()
            running.forget()

    async def _run_activity(
        self, task: worker_pb2.ActivityTask, fn: Callable[..., Any], context: _ActivityContext, span: Span | None,
        heartbeats: ActivityHeartbeats,
    ) -> None:
        try:
            try:
                hints = self._hints.get(task.activity_type)
                if hints is None:  # first run of this activity: activity_hints() reads and caches them
                    hints = self._hints[task.activity_type] = activity_hints(fn)
                args = self._converter.decode_args(task.input, hints.params)
            except Exception as exc:
                raise ApplicationError(f"cannot decode input: {exc}", type=PAYLOAD_ERROR, non_retryable=True) from exc
            if task.activity_type in self._async_activities:
                value = await fn(*args)
            else:
                assert self._executor is not None
                # Copy the context so the thread sees activity.info() and the cancellation flag.
                thread_context = contextvars.copy_context()
                value = await asyncio.get_running_loop().run_in_executor(
                    self._executor, functools.partial(thread_context.run, fn, *args)
                )
            try:
                payload = self._converter.to_payload(value)
            except Exception as exc:
                raise ApplicationError(f"cannot encode result: {exc}", type=PAYLOAD_ERROR, non_retryable=True) from exc
        except asyncio.CancelledError:
            if context.cancelled:
                return  # the server gave up on this activity: nobody waits for its result
            raise
        except Exception as exc:
            if context.cancelled:
                return
            _tracing.fail(span, type(exc).__name__, str(exc))
            self._log_failure(task, exc)
            heartbeats.flush()  # the last details precede the outcome on the stream
            self._report_failure(task, self._failure_from(exc))
            return
        if context.cancelled:
            return  # finished after cancellation (e.g. a sync activity that ignored the flag)
        heartbeats.flush()
        self._send_outcome(task.activity_id, task.session_id, result=payload)

    def _report_failure(self, task: worker_pb2.ActivityTask, failure: session_pb2.ActivityFailure) -> None:
        self._send_outcome(task.activity_id, task.session_id, failure=failure)

    def _send_outcome(
        self,
        activity_id: str,
        session_id: str,
        *,
        result: session_pb2.Payload | None = None,
        failure: session_pb2.ActivityFailure | None = None,
    ) -> None:
        """Send an activity's outcome, or a ResultTooLarge failure if it is over the server's limit."""
        # Built in place: an ActivityResult passed to the request's constructor would be copied again.
        message = worker_pb2.WorkerHeartbeatRequest()
        outcome = message.activity_result
        outcome.activity_id = activity_id
        outcome.session_id = session_id
        if result is not None:
            outcome.result.CopyFrom(result)
            variable = payload_bytes(result)
        else:
            assert failure is not None
            outcome.failure.CopyFrom(failure)
            variable = len(failure.type) + len(failure.message) + payload_bytes(failure.details)
        limit = self._max_message_size
        size = oversize(message, variable + len(activity_id) + len(session_id), limit)
        if size:
            what = (f"result is {len(result.data)} bytes ({size} encoded)" if result is not None
                    else f"failure ({failure.type if failure else ''}) is {size} bytes encoded")
            text = f"the activity's {what}, over the server's max_message_size of {limit} bytes"
            logger.warning("activity %s: %s; reporting %s instead", activity_id, text, RESULT_TOO_LARGE)
            message = worker_pb2.WorkerHeartbeatRequest(activity_result=worker_pb2.ActivityResult(
                activity_id=activity_id, session_id=session_id,
                failure=session_pb2.ActivityFailure(type=RESULT_TOO_LARGE, message=text, non_retryable=True)))
        self._send(message)

    def _failure_from(self, exc: Exception) -> session_pb2.ActivityFailure:
        if isinstance(exc, ApplicationError):
            failure = session_pb2.ActivityFailure(type=exc.type, message=exc.message, non_retryable=exc.non_retryable)
            if exc.details:
                value = exc.details[0] if len(exc.details) == 1 else list(exc.details)
                try:
                    failure.details.CopyFrom(self._converter.to_payload(value))
                except Exception:
                    logger.warning("cannot encode ApplicationError details of type %s", type(value).__name__)
            return failure
        return session_pb2.ActivityFailure(type=type(exc).__name__, message=str(exc))

    def _log_failure(self, task: worker_pb2.ActivityTask, exc: Exception) -> None:
        if isinstance(exc, ApplicationError):
            logger.debug("activity %s (%s) failed: %s", task.activity_type, task.activity_id, exc)
        else:
            logger.warning("activity %s (%s) raised", task.activity_type, task.activity_id, exc_info=exc)

    async def _unwind_activities(self) -> None:
        for running in list(self._running.values()):
            running.cancel("WORKER_SHUTDOWN")
        tasks = [running.task for running in self._running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=_ACTIVITY_UNWIND_TIMEOUT)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._shutdown_requested.is_set():
            logger.info("%s: draining (send it again to stop at once)", sig.name)
            self.shutdown(drain=True)
        else:
            logger.info("%s: stopping now", sig.name)
            self.shutdown(drain=False)


def _activity_table(
    activities: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
) -> dict[str, Callable[..., Any]]:
    table: dict[str, Callable[..., Any]] = {}
    if isinstance(activities, Mapping):
        items: Iterable[tuple[str, Callable[..., Any]]] = activities.items()
    else:
        items = ((_activity_name(fn), fn) for fn in activities)
    for name, fn in items:
        if not name:
            raise ValueError("activity names must not be empty")
        if not callable(fn):
            raise TypeError(f"activity {name!r} is not callable")
        if name in table:
            raise ValueError(f"activity {name!r} registered twice")
        table[name] = fn
    if not table:
        raise ValueError("register at least one activity")
    return table


def _is_async(fn: Callable[..., Any]) -> bool:
    # Plain async functions and partials of them, or instances of a class with ``async def __call__``.
    if inspect.iscoroutinefunction(fn):
        return True
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)
