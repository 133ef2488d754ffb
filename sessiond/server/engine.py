"""The application layer around the pure core: clock, timer, futures, worker connections.

The engine owns the one :class:`~sessiond.core.table.SessionTable`. Every call reads the
monotonic clock, calls the core, then *flushes*: drains the core's events and publishes
them (stream messages to workers, results to waiting RPCs, states to watchers), and re-arms
a single ``loop.call_at`` timer at the core's next deadline. Everything runs on one event
loop, so nothing interleaves between a core call and its flush.

The engine also notices its own stalls. While workers are connected it looks at the clock at
least every ``_TICK`` seconds; a gap longer than ``_STALL`` between two looks means the loop did not
run (SIGSTOP, a GC pause, CPU starvation), and the first look after it reports the gap to the core
as a server pause *before* anything is judged. Liveness then credits the pause to every worker, so
the messages workers sent meanwhile are read before their silence is measured (SPEC §6.1).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sessiond_client.api.v1 import session_pb2, session_service_pb2, worker_pb2

from sessiond.config import ServerConfig
from sessiond.core import events as ev
from sessiond.core.errors import (
    ActivityHeartbeatTimeoutError,
    MessageTooLargeError,
    OwnerUnavailableError,
    RecoveringError,
    SessionError,
    SessionNotFoundError,
    ShuttingDownError,
    WorkerBackloggedError,
)
from sessiond.core.model import (
    ANYONE,
    Activity,
    Session,
    SessionOptions,
    SessionRecord,
    SessionState,
    Viewer,
    Waiter,
    Worker,
    WorkerKey,
    WorkerRegistration,
)
from sessiond.core.resources import ResourceVector
from sessiond.core.selector import EVERYTHING, Selector
from sessiond.core.table import SessionTable
from sessiond.core.token import Signer
from sessiond.logs import RateLimitedWarning
from sessiond.server.convert import (
    WallClock,
    duration,
    record_parts,
    resource_map,
    session_to_pb,
    set_duration,
    waiting_to_pb,
    worker_to_pb,
)
from sessiond.server.limits import payload_bytes, result_bytes, task_bytes, too_large_result
from sessiond.server.watches import Watches
from sessiond.server.worker_connection import WorkerConnection
from sessiond.store.spec import EtcdStoreSpec
from sessiond.telemetry import NoMetrics, SessionMetrics, tracing
from sessiond.telemetry.failures import FailureLog, FailureRecord

if TYPE_CHECKING:
    from sessiond.server.cluster import Cluster  # imports the etcd store: only replicas load it

log = logging.getLogger("sessiond.engine")

_ONE_SESSION = ResourceVector.one_session()
# ListWorkers and the dashboard show at most this many kinds of waiting Creates.
MAX_WAITING_SHOWN = 100
# While workers are connected the engine looks at the clock at least this often (seconds)...
_TICK = 0.1
# ... so a longer gap between two looks is a stall of the server itself, credited to the workers.
_STALL = 0.25
# A stall this long is also worth a WARNING (one per stall).
_STALL_WARNING = 1.0
_HEARTBEAT_ACK = worker_pb2.HeartbeatAck()
# Task templates kept (see Engine._task_message): a few per worker interval; past this, start again.
_MAX_TASK_TEMPLATES = 256


@dataclass(eq=False)
class _Wait:
    """A waiting Create/Recreate, shared by retries with the same request_id."""

    future: asyncio.Future[Session]
    task_queue: str
    refs: int = 0


class Engine:
    """Runs the session table on an asyncio loop. Create it inside the running loop."""

    def __init__(self, config: ServerConfig, metrics: SessionMetrics | None = None, *,
                 signer: Signer | None = None, verify_reports: bool = False, replicated: bool = False) -> None:
        """Args:
            config: the server's settings.
            metrics: where to count (default: nowhere).
            signer: signs recreate tokens and the session records handed to workers (default: a
                random key of this process).
            verify_reports: adopt a session a worker reports after a restart only when the record
                carries this server's signature (authentication on: a worker must not be able to
                make up a session for another principal). Off, reports are trusted as they come.
            replicated: a replica on the etcd store (SPEC §6.5): reports are vetted against the
                store, and the recovery window is the store's failover window.
        """
        self.config = config
        self.signer = signer or Signer()
        self.verify_reports = verify_reports
        self.metrics: SessionMetrics = metrics or NoMetrics()
        self.incarnation = str(uuid.uuid4())
        self.clock = WallClock()
        self._loop = asyncio.get_running_loop()
        # Every start may be a restart: for the recovery window, workers' reports are adopted.
        self.recovery_window = config.recovery_window.total_seconds()
        # A replica (SPEC §6.5): sessions are durable in the store; the window is the failover
        # window, and a registering worker's reports are vetted against the store, not a window.
        self.cluster: Cluster | None = None
        spec = config.store_spec
        if replicated and isinstance(spec, EtcdStoreSpec):
            self.recovery_window = spec.failover_window.total_seconds()
        self.table = SessionTable(
            retention=config.retention.total_seconds(),
            max_heartbeat_interval=config.max_heartbeat_interval.total_seconds(),
            recovering_until=-math.inf if replicated else self._loop.time() + self.recovery_window,
            signer=self.signer,
            max_waiters=config.max_waiters,
            max_waiters_per_queue=config.max_waiters_per_queue,
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._connections: dict[WorkerKey, WorkerConnection] = {}
        self._waits: dict[str, _Wait] = {}
        self._activities: dict[str, asyncio.Future[worker_pb2.ActivityResult]] = {}
        # Tasks of activities that wait for a detached session's worker to come back.
        self._held_tasks: dict[str, worker_pb2.ActivityTask] = {}
        # The latest heartbeat details of activities in flight that sent some (bounded by them).
        self._heartbeat_details: dict[str, session_pb2.Payload] = {}
        # What activity tasks share, by (worker interval, session resources, start_to_close timeout).
        self._task_templates: dict[tuple[float, ResourceVector, float], worker_pb2.WorkerHeartbeatResponse] = {}
        # Open WatchSession streams, by session.
        self.watches = Watches(self.to_pb)
        # Set by begin_shutdown: a stop is a restart, so nothing that ends now fails a session.
        self._stopping = False
        # Set by begin_drain: no new work (creates, recreates, activities) is taken; what a worker
        # already runs finishes. While a drain waits: the event set when the last activity's caller
        # has its answer.
        self._draining = False
        self._idle: asyncio.Event | None = None
        # Recent failures by cause, for the operator dashboard (bounded).
        self.failures = FailureLog()
        self.metrics.observe_unplaceable(self._unplaceable_threadsafe)
        self._max_message_size = config.max_message_size
        self._max_backlog = config.max_worker_backlog
        # A worker can repeat register at will: one WARNING a minute, however many streams do it.
        self._repeated_register = RateLimitedWarning(log, "ignored a repeated register:", interval=60.0)
        # When the engine last looked at the clock, and the tick that keeps it looking.
        self._alive_at = self._loop.time()
        self._ticker: asyncio.TimerHandle | None = None

    def now(self) -> float:
        """Monotonic seconds: the loop's clock, the one the timer uses.

        Every engine entry point reads it first, so a stall of the loop is reported to the core
        (as a server pause) before the call that follows it judges anything.
        """
        now = self._loop.time()
        if now - self._alive_at > _STALL and self._ticker is not None:
            self._stalled(self._alive_at, now)
        self._alive_at = now
        return now

    def _stalled(self, since: float, now: float) -> None:
        self.table.server_paused(since, now)
        if now - since >= _STALL_WARNING:
            log.warning("sessiond's event loop stalled for %.1f s (SIGSTOP, GC pause or CPU starvation?); "
                        "workers are not blamed for that silence", now - since)

    def _tick(self) -> None:
        self.now()
        self._ticker = self._loop.call_later(_TICK, self._tick) if self._connections else None

    def to_pb(self, session: Session) -> session_pb2.Session:
        """A session as the wire shows it."""
        return session_to_pb(session, self.clock, self.signer)

    def to_worker_pb(self, session: Session) -> session_pb2.Session:
        """A session as its worker gets it: signed, so a restarted server can trust the worker's report."""
        out = self.to_pb(session)
        out.record_signature = self.signer.record_signature(record_parts(out, session.worker.principal))
        return out

    def worker_to_pb(self, worker: Worker) -> session_pb2.WorkerInfo:
        """A connected worker as the operator sees it (with the bytes queued for it)."""
        info = worker_to_pb(worker, self.clock)
        conn = self._connection(worker.key, worker.epoch)
        if conn is not None:
            info.outbound_backlog_bytes = conn.queued_bytes
        return info

    def waiting_to_pb(self, task_queue: str = "") -> list[session_pb2.WaitingRequests]:
        """The waiting Creates (of ``task_queue``, or all) by what they ask for, oldest first, at most
        :data:`MAX_WAITING_SHOWN` kinds, each with why no worker could hold it if none could."""
        kinds = self.table.waiting_kinds(task_queue)
        kinds.sort(key=lambda k: k.oldest_since)
        return [waiting_to_pb(kind, self.clock) for kind in kinds[:MAX_WAITING_SHOWN]]

    # ----------------------------------------------------------------- callers

    async def create_session(self, task_queue: str, options: SessionOptions, *, owner: str,
                             request_id: str, max_wait: float | None = None,
                             demand: ResourceVector = _ONE_SESSION, selector: Selector = EVERYTHING,
                             principal: str = "") -> Session:
        """Place a session for ``principal`` asking for ``demand`` on a worker matching ``selector``,
        waiting up to ``options.creation_timeout`` (and ``max_wait``) for room."""
        if self._draining:
            raise self.drain_refusal("a session is placed")
        started = self.now()
        try:
            result = self.table.create(started, task_queue, options, owner=owner, request_id=request_id,
                                       max_wait=max_wait, demand=demand, selector=selector, principal=principal)
        except SessionError as error:  # answered at once: NO_CAPACITY, EXISTING_OPEN_SESSION, ...
            self.metrics.creation_rejected(task_queue, error.reason)
            raise
        self._flush()
        if self.cluster is not None and isinstance(result, Session):
            await self.cluster.commits.placed(result.session_id)
        return await self._settle(result, started)

    async def recreate_session(self, token: bytes, options: SessionOptions, *, owner: str,
                               request_id: str, max_wait: float | None = None,
                               demand: ResourceVector = _ONE_SESSION, principal: str = "") -> Session:
        """Place a session for ``principal`` asking for ``demand`` on the token's worker, waiting up to
        ``options.creation_timeout`` (and ``max_wait``)."""
        if self._draining:
            raise self.drain_refusal("a session is placed")
        started = self.now()
        try:
            result = self.table.recreate(started, token, options, owner=owner, request_id=request_id,
                                         max_wait=max_wait, demand=demand, principal=principal)
        except SessionError as error:
            self.metrics.creation_rejected(self._token_queue(token), error.reason)
            raise
        self._flush()
        if self.cluster is not None and isinstance(result, Session):
            await self.cluster.commits.placed(result.session_id)
        return await self._settle(result, started)

    async def _settle(self, result: Session | Waiter, started: float) -> Session:
        if isinstance(result, Session):
            session = result
        else:
            session = await self._wait(result)
        self.metrics.placement_latency(session.task_queue, self.now() - started)
        tracing.add_event("placed", session_id=session.session_id, worker_id=session.worker.key.worker_id)
        return session

    async def _wait(self, result: Waiter) -> Session:
        wait = self._waits.get(result.waiter_id)
        if wait is None:
            wait = self._waits[result.waiter_id] = _Wait(self._loop.create_future(), result.task_queue)
            self.metrics.waiters(result.task_queue, +1)
        tracing.add_event("waiting", task_queue=result.task_queue)
        wait.refs += 1
        try:
            # Shielded: a retry with the same request_id shares the future, and one caller
            # giving up must not cancel it for the others.
            return await asyncio.shield(wait.future)
        except asyncio.CancelledError:
            wait.refs -= 1
            if wait.refs == 0:
                self._abandon_wait(result.waiter_id, wait)
            raise

    def _abandon_wait(self, waiter_id: str, wait: _Wait) -> None:
        """Every caller of a waiter gave up: it takes no slot (or gives back one placed meanwhile)."""
        future = wait.future
        if future.done() and not future.cancelled() and future.exception() is None:
            # Placed in the same loop turn the caller was cancelled in: release the slot.
            self.table.complete(self.now(), future.result().session_id)
        else:
            self.table.cancel_waiter(self.now(), waiter_id)
            if self._waits.pop(waiter_id, None) is not None:
                self.metrics.waiters(wait.task_queue, -1)
            if not future.done():
                future.cancel()
        self._flush()

    def complete_session(self, session_id: str, viewer: Viewer = ANYONE) -> Session:
        """Close a session ``viewer`` may see (a no-op unless OPEN)."""
        session = self.table.complete(self.now(), session_id, viewer)
        self._flush()
        return session

    def holds(self, session_id: str) -> bool:
        """Whether this process's table knows the session (replicas: else another replica may)."""
        try:
            self.table.get(session_id)
        except SessionNotFoundError:
            return False
        return True

    def get_session(self, session_id: str, viewer: Viewer = ANYONE) -> Session:
        """Read a session ``viewer`` may see (a caller asking about it attends it)."""
        return self.table.lookup(self.now(), session_id, viewer)

    async def execute_activity(self, session_id: str, activity_type: str, payload: session_pb2.Payload,
                               timeout: float, headers: dict[str, str], *, heartbeat_timeout: float | None = None,
                               attempt: int = 0, heartbeat_details: session_pb2.Payload | None = None,
                               viewer: Viewer = ANYONE) -> session_service_pb2.ExecuteActivityResponse:
        """Send an activity to the session's worker and wait for its outcome.

        Refused before anything is sent when the task would exceed ``max_message_size``
        (MESSAGE_TOO_LARGE) or the worker's queue is at ``max_worker_backlog`` (WORKER_BACKLOGGED).
        A heartbeat timeout is an outcome, not an error: the response says so in-band, with the
        activity's latest heartbeat details (as it does for a result or a failure). While the
        server drains (:meth:`drain`) it is refused with RECOVERING: nothing was sent.
        """
        started = self.now()
        activity = self.table.start_activity(started, session_id, timeout, heartbeat_timeout, viewer)
        activity_id = activity.activity_id
        if self._draining:  # after start_activity: a closed, failed or unknown session says so first
            self.table.abandon_activity(activity_id)
            raise self.drain_refusal("the activity is sent", session_id=session_id)
        conn = self._connection(activity.worker.key, activity.epoch)
        message = self._task_message(activity.worker, self.table.get(session_id).demand, timeout)
        task = message.activity_task
        task.activity_id = activity_id
        task.session_id = session_id
        task.activity_type = activity_type
        task.input.CopyFrom(payload)
        if headers:
            task.headers.update(headers)
        if heartbeat_timeout is not None:
            set_duration(task.heartbeat_timeout, heartbeat_timeout)
        if attempt:
            task.attempt = attempt
        if heartbeat_details is not None:
            task.heartbeat_details.CopyFrom(heartbeat_details)
        size = task_bytes(payload, headers, activity_type, session_id, heartbeat_details)
        if size > self._max_message_size:
            size = message.ByteSize()  # exact, only near the limit (it encodes the message)
            if size > self._max_message_size:
                self.table.abandon_activity(activity_id)
                raise MessageTooLargeError("the activity task (its input, headers and ids)", size,
                                           self._max_message_size, session_id=session_id)
        if conn is not None and not conn.has_room(size, self._max_backlog):
            self.table.abandon_activity(activity_id)
            self._backlogged(conn)
            raise WorkerBackloggedError(conn.key.worker_id, session_id, conn.queued_bytes, self._max_backlog)
        future: asyncio.Future[worker_pb2.ActivityResult] = self._loop.create_future()
        self._activities[activity_id] = future
        if conn is not None:
            conn.put_task(activity_id, message, size)
        else:
            # The session is detached: the task goes out when its worker reattaches (or never, if
            # the activity's timeout or the session's end comes first).
            self._held_tasks[activity_id] = task
        # Not kept in this frame while waiting: a traceback of a failed call would hold them.
        del message, task, conn
        self._flush()
        outcome = "cancelled"
        response = session_service_pb2.ExecuteActivityResponse()
        try:
            result = await future
            if result.HasField("failure"):
                outcome = "failed"
                response.failure.CopyFrom(result.failure)
            else:
                outcome = "ok"
                response.result.CopyFrom(result.result)
        except ActivityHeartbeatTimeoutError as error:
            outcome = error.reason
            response.heartbeat_timeout.CopyFrom(session_pb2.ActivityFailure(
                type="ActivityHeartbeatTimeout", message=error.message))
        except SessionError as error:
            outcome = error.reason
            raise
        except asyncio.CancelledError:
            if self._activities.pop(activity_id, None) is not None:
                gone = self.table.abandon_activity(activity_id)
                if gone is not None:
                    self._cancel_on_worker(gone, "CALLER_CANCELLED")
                self._flush()
            raise
        finally:
            if self._idle is not None and not self._activities:
                self._idle.set()  # the last activity a drain waited for has its answer
            self._held_tasks.pop(activity_id, None)
            now = self.now()
            # The caller attended the session for as long as it waited for this result.
            self.table.caller_seen(now, session_id)
            details = self._heartbeat_details.pop(activity_id, None) if self._heartbeat_details else None
            if self.metrics.enabled:
                self.metrics.activity_done(activity_type, now - started, outcome)
        if details is not None:
            response.heartbeat_details.CopyFrom(details)
        return response

    async def watch_session(self, session_id: str, viewer: Viewer = ANYONE) -> AsyncIterator[session_pb2.Session]:
        """The session now, then each change (detached, reattached), ending after its terminal state.

        An open watch attends the session (caller liveness) for as long as it lasts.
        """
        session = self.table.watch_started(self.now(), session_id, viewer)
        try:
            # aclosing: a watch that goes away unregisters now, not when the generator is collected.
            async with aclosing(self.watches.stream(session)) as updates:
                async for snapshot in updates:
                    yield snapshot
        finally:
            self.table.watch_ended(self.now(), session)

    # ----------------------------------------------------------------- workers

    def connect_worker(self, registration: WorkerRegistration, held: list[SessionRecord] | None = None, *,
                       adopt_held: bool = False) -> WorkerConnection:
        """Register a worker stream (its detached sessions and, during the recovery window, the
        sessions it reports come back to it). A previous stream with the same key is replaced only
        when stale or of the same process, and is told so; else WorkerIdInUseError."""
        worker = self.table.connect_worker(self.now(), registration, held or (), adopt_held=adopt_held)
        old = self._connections.get(worker.key)
        if old is not None:
            # In-band, before its stream ends: a frozen process reads this first when it wakes up.
            old.put(worker_pb2.WorkerHeartbeatResponse(
                server_incarnation=self.incarnation,
                worker_replaced=worker_pb2.WorkerReplaced(
                    message=f"a newer registration of worker_id {worker.key.worker_id!r} replaced this stream"),
            ))
            old.close()
            self.metrics.workers(worker.key.task_queue, -1)
            self.metrics.resources_capacity(worker.key.task_queue, old.capacity.as_dict(), -1)
            log.warning("worker stream replaced", extra={"worker_id": worker.key.worker_id,
                                                         "task_queue": worker.key.task_queue})
        self.metrics.workers(worker.key.task_queue, +1)
        self.metrics.resources_capacity(worker.key.task_queue, worker.capacity.as_dict(), +1)
        self._connections[worker.key] = conn = WorkerConnection(worker.key, worker.epoch, worker.capacity)
        if self._ticker is None:
            self._alive_at = self._loop.time()
            self._ticker = self._loop.call_later(_TICK, self._tick)
        # Registered goes first (the WorkerRegistered event leads the outbox): placements for
        # waiters follow it on the stream.
        self._flush()
        log.info("worker joined", extra={"worker_id": worker.key.worker_id, "task_queue": worker.key.task_queue,
                                         "host_name": worker.host_name, "capacity": str(worker.capacity),
                                         "open_sessions": len(worker.sessions)})
        return conn

    def worker_message(self, conn: WorkerConnection, request: worker_pb2.WorkerHeartbeatRequest) -> bool:
        """Handle one message from a worker. False means the connection is fenced: close it."""
        now = self.now()
        worker = self.table.worker_seen(now, conn.key, conn.epoch)
        if worker is None:
            return False
        kind = request.WhichOneof("message")
        if kind == "activity_result":
            result = request.activity_result
            activity = self.table.finish_activity(conn.key, conn.epoch, result.activity_id, result.session_id)
            future = self._activities.pop(result.activity_id, None) if activity is not None else None
            if future is not None and not future.done():
                future.set_result(self._fit_result(conn, result, request))
        elif kind == "heartbeat" and not conn.ack_queued:
            conn.put_ack(self._message(worker, heartbeat_ack=_HEARTBEAT_ACK))
        elif kind == "activity_heartbeat":
            beat = request.activity_heartbeat
            if self.table.activity_heartbeat(now, conn.key, conn.epoch, beat.activity_id, beat.session_id) \
                    is not None and beat.HasField("details") \
                    and payload_bytes(beat.details) <= self._max_message_size // 2:
                # Kept only up to half the limit: the response carries them next to the result.
                self._heartbeat_details[beat.activity_id] = beat.details
        elif kind == "goodbye":
            drain = request.goodbye.drain
            self.table.worker_goodbye(now, conn.key, conn.epoch, drain=drain)
            self._flush()  # SessionEnded for sessions a goodbye without drain failed, before the ack
            ack = worker_pb2.GoodbyeAck(drain=drain, session_ids=sorted(worker.sessions))
            self._send(conn, worker, goodbye_ack=ack)
            log.info("worker said goodbye", extra={"worker_id": conn.key.worker_id, "drain": drain,
                                                   "open_sessions": len(worker.sessions)})
        elif kind == "decline_session":
            declined = request.decline_session
            log.info("worker declined a session it got back", extra={
                "worker_id": conn.key.worker_id, "session_id": declined.session_id, "reason": declined.reason})
            self.table.decline_session(now, conn.key, conn.epoch, declined.session_id)
        elif kind == "register":
            self._repeated_register.warn(f"worker {conn.key.worker_id} sent register twice on one stream")
        self._flush()
        return True

    def _fit_result(self, conn: WorkerConnection, result: worker_pb2.ActivityResult,
                    request: worker_pb2.WorkerHeartbeatRequest) -> worker_pb2.ActivityResult:
        """The result, or a ResultTooLarge failure if it is over the limit (from a worker that did
        not check the limit it was given: the library never sends one)."""
        if result_bytes(result) <= self._max_message_size:
            return result
        size = request.ByteSize()
        if size <= self._max_message_size:
            return result
        log.warning("worker %s sent a %d-byte result, over max_message_size %d; failing that activity",
                    conn.key.worker_id, size, self._max_message_size)
        return too_large_result(result, size, self._max_message_size)

    def _backlogged(self, conn: WorkerConnection) -> None:
        """The worker's stream is not taking what is queued: it gets no new sessions meanwhile, so
        nothing more (SessionStarted, tasks) piles up for a worker that does not read."""
        if not conn.backlogged:
            conn.backlogged = True
            self.table.worker_backlogged(self.now(), conn.key, conn.epoch, True)
            log.warning("worker %s is not reading its stream (%d bytes queued, max_worker_backlog %d): "
                        "no new sessions or activities for it until it drains",
                        conn.key.worker_id, conn.queued_bytes, self._max_backlog)

    def worker_drained(self, conn: WorkerConnection) -> None:
        """Called by the stream handler while ``conn.backlogged``, after each message the stream
        took: once half the bound is free, the worker takes sessions again."""
        if conn.backlogged and conn.queued_bytes <= self._max_backlog // 2:
            conn.backlogged = False
            self.table.worker_backlogged(self.now(), conn.key, conn.epoch, False)
            log.info("worker %s reads its stream again", conn.key.worker_id)
            self._flush()

    def disconnect_worker(self, conn: WorkerConnection) -> None:
        """The worker's stream ended: nothing queued for it is kept."""
        conn.discard()
        if self._connections.get(conn.key) is conn:
            del self._connections[conn.key]
            if self._stopping:
                return  # a restart: the worker keeps its sessions and reports them to the next server
            worker = self.table.worker(conn.key, conn.epoch)
            goodbye = worker is not None and worker.draining
            self.table.disconnect_worker(self.now(), conn.key, conn.epoch)
            self.metrics.workers(conn.key.task_queue, -1)
            self.metrics.resources_capacity(conn.key.task_queue, conn.capacity.as_dict(), -1)
            log.info("worker left" if goodbye else "worker lost",
                     extra={"worker_id": conn.key.worker_id, "task_queue": conn.key.task_queue})
            self._flush()

    def drop_worker(self, key: WorkerKey, why: str) -> None:
        """Replicas: another replica owns the worker now. Its sessions leave this table without an
        event (they live on at the new owner); their in-flight activities and local watches end with
        OWNER_UNAVAILABLE (retried, the retry is forwarded to the owner); the worker's stream here is
        closed."""
        sessions, activities = self.table.drop_worker(self.now(), key)
        for activity in activities:
            self._held_tasks.pop(activity.activity_id, None)
            future = self._activities.pop(activity.activity_id, None)
            if future is not None and not future.done():
                future.set_exception(OwnerUnavailableError(
                    f"worker {key.worker_id!r} moved to another replica ({why}); the activity's outcome is unknown "
                    "there: it may have run", metadata={"session_id": activity.session_id}))
        for session in sessions:
            self.metrics.resources_used(session.task_queue, resource_map(session.demand), -1)
            self.watches.end(session.session_id, OwnerUnavailableError(
                f"worker {key.worker_id!r} moved to another replica ({why}); watch again",
                metadata={"session_id": session.session_id}))
        conn = self._connections.get(key)
        if conn is not None:
            conn.close()
        if sessions:
            log.warning("worker moved to another replica: its sessions are forgotten here",
                        extra={"worker_id": key.worker_id, "task_queue": key.task_queue, "sessions": len(sessions)})
        self._flush()

    @property
    def draining(self) -> bool:
        """Whether the server drains before a restart (:meth:`drain`): it takes no new work."""
        return self._draining

    @property
    def activities_in_flight(self) -> int:
        """Activities whose caller waits for their outcome."""
        return len(self._activities)

    def drain_refusal(self, what: str, *, session_id: str = "") -> RecoveringError:
        """The answer to a call that would start new work while the server drains: UNAVAILABLE
        RECOVERING, the reason that says nothing happened yet (clients repeat any call that meets
        it, an activity included, and reach the restarted server or another replica)."""
        return RecoveringError(
            f"the server is draining before a restart: no new work starts here until it is back; nothing was "
            f"done (before {what}): retry", metadata={"session_id": session_id} if session_id else None)

    def begin_drain(self) -> None:
        """Stop taking new work, before a restart (SIGTERM): new Creates, Recreates and activities
        are refused with :meth:`drain_refusal`; waiting Creates/Recreates end now with SHUTTING_DOWN
        (nothing was placed, as at a stop), and activities whose task waits for a detached session's
        worker (never sent) end with the refusal. Activities a worker runs go on: their results
        reach their callers. Sessions, heartbeats, watches, CompleteSession and reads are untouched.
        Idempotent."""
        if self._draining:
            return
        self._draining = True
        self._end_waiters()
        for activity_id, task in list(self._held_tasks.items()):  # never sent: refused like a new one
            del self._held_tasks[activity_id]
            self.table.abandon_activity(activity_id)
            future = self._activities.pop(activity_id, None)
            if future is not None and not future.done():
                future.set_exception(self.drain_refusal("the activity is sent", session_id=task.session_id))
        self._flush()

    async def drain(self, timeout: float, *, abort: Sequence[asyncio.Event] = ()) -> tuple[int, int]:
        """:meth:`begin_drain`, then wait up to ``timeout`` seconds until no activity is in flight
        (or one of ``abort`` is set). Logs one INFO line at its start and one at its end. Returns (the
        activities in flight at the start, those still in flight at the end: :meth:`begin_shutdown`
        cuts them)."""
        self.begin_drain()
        started = self._loop.time()
        waiting = len(self._activities)
        log.info("draining before the restart: %d activities in flight, waiting up to %g s for them", waiting,
                 timeout)
        if self._activities and timeout > 0:
            self._idle = asyncio.Event()
            waits = [asyncio.ensure_future(event.wait()) for event in (self._idle, *abort)]
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
                self._idle = None
        cut = len(self._activities)
        log.info("drained in %.2f s: %d of %d activities finished, %d cut (they end SHUTTING_DOWN)",
                 self._loop.time() - started, waiting - cut, waiting, cut)
        return waiting, cut

    def _end_waiters(self) -> None:
        """Waiting Creates/Recreates end with SHUTTING_DOWN: nothing was placed (retry elsewhere)."""
        self.table.cancel_waiter(self.now(), *self._waits)
        for waiter_id, wait in list(self._waits.items()):
            del self._waits[waiter_id]
            self.metrics.waiters(wait.task_queue, -1)
            if not wait.future.done():
                wait.future.set_exception(ShuttingDownError("the server is shutting down; retry"))

    def begin_shutdown(self) -> None:
        """The server is going away to restart: no session fails. Waiting Creates/Recreates and
        activities in flight (a drain did not see finish) end now with a retryable UNAVAILABLE
        SHUTTING_DOWN (an activity's outcome is unknown: it may have run), watches end the same way
        (callers resubscribe to the next server), and every worker is told the server restarts, then
        its stream ends: it keeps its sessions and reports them to the next server within the
        recovery window."""
        self._stopping = True
        self._draining = True
        stopping = ShuttingDownError("the server is shutting down to restart; retry")
        self._end_waiters()
        for future in self._activities.values():
            if not future.done():
                future.set_exception(stopping)
        self._activities.clear()
        self.watches.end_all(stopping)
        restarting = worker_pb2.ServerRestarting(recovery_window=duration(self.recovery_window))
        for conn in list(self._connections.values()):
            conn.put(worker_pb2.WorkerHeartbeatResponse(server_incarnation=self.incarnation,
                                                        server_restarting=restarting))
            conn.close()
        self._flush()

    def stop(self) -> None:
        """Stop the timers (after the gRPC server stopped)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def unplaceable_by_queue(self) -> dict[str, int]:
        """Waiting Creates no connected worker could ever hold, by task queue (on the loop's thread)."""
        counts: dict[str, int] = {}
        for kind in self.table.waiting_kinds():
            if kind.unplaceable is not None:
                counts[kind.task_queue] = counts.get(kind.task_queue, 0) + kind.count
        return counts

    def _unplaceable_threadsafe(self) -> dict[str, int]:
        # Metric exporters collect on their own thread; the table belongs to the loop's thread.
        if self._loop.is_closed():
            return {}
        try:
            if asyncio.get_running_loop() is self._loop:
                return self.unplaceable_by_queue()
        except RuntimeError:  # no loop in this thread: the exporter's
            pass
        result: concurrent.futures.Future[dict[str, int]] = concurrent.futures.Future()

        def compute() -> None:
            try:
                result.set_result(self.unplaceable_by_queue())
            except Exception as exc:  # never leave the exporter waiting
                result.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(compute)
            return result.result(timeout=2.0)
        except Exception:  # a stopped or busy loop: report nothing this time
            return {}

    def _connection(self, key: WorkerKey, epoch: int) -> WorkerConnection | None:
        conn = self._connections.get(key)
        return conn if conn is not None and conn.epoch == epoch else None

    def _message(self, worker: Worker, **message: object) -> worker_pb2.WorkerHeartbeatResponse:
        """A stream message to ``worker``: every one carries the incarnation and the worker's interval."""
        out = worker_pb2.WorkerHeartbeatResponse(**message)  # type: ignore[arg-type]
        out.server_incarnation = self.incarnation
        set_duration(out.heartbeat_interval, worker.interval)
        return out

    def _task_message(self, worker: Worker, demand: ResourceVector,
                      timeout: float) -> worker_pb2.WorkerHeartbeatResponse:
        """A stream message to ``worker`` holding an activity task with what tasks of a session with
        ``demand`` and a start_to_close ``timeout`` share: the message's incarnation and interval, the
        task's resources and timeout. Copied from a template: one copy costs a fifth of setting them.
        (The rest is set in place afterwards: building an ActivityTask and passing it, and None/empty
        fields, to the message's constructor costs about three times as much.)"""
        key = (worker.interval, demand, timeout)
        template = self._task_templates.get(key)
        if template is None:
            if len(self._task_templates) >= _MAX_TASK_TEMPLATES:
                self._task_templates.clear()
            template = self._task_templates[key] = self._message(worker)
            task = template.activity_task
            task.resources.update(resource_map(demand))
            set_duration(task.start_to_close_timeout, timeout)
        out = worker_pb2.WorkerHeartbeatResponse()
        out.CopyFrom(template)
        return out

    def _send(self, conn: WorkerConnection, worker: Worker, **message: object) -> None:
        conn.put(self._message(worker, **message))
        if conn.queued_bytes > self._max_backlog:
            self._backlogged(conn)

    def _cancel_on_worker(self, activity: Activity, reason: str) -> None:
        conn = self._connection(activity.worker.key, activity.epoch)
        # A task still queued leaves the queue at once and is never sent: nothing to cancel.
        if conn is not None and not conn.drop_task(activity.activity_id):
            self._send(conn, activity.worker, cancel_activity=worker_pb2.CancelActivity(
                activity_id=activity.activity_id, session_id=activity.session_id, reason=reason))

    # ----------------------------------------------------------------- events and time

    def _flush(self) -> None:
        if self.cluster is None:
            for event in self.table.take_events():
                self._publish(event)
        else:
            events = self.table.take_events()
            if events:
                self.cluster.commits.submit(events)  # commit, then publish (SPEC §6.5)
            self.cluster.admission.local_changed()  # free slots may have changed
        # An armed timer fires at or before every deadline there was when it was armed: only one set
        # since can need it sooner (O(1)). An unarmed one needs the earliest of all (peeks every queue).
        deadline = self.table.take_new_deadline()
        if self._timer_at == math.inf:
            deadline = self.table.next_deadline()
        if deadline is not None and deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self.table.advance(self.now())
        self._flush()

    def _publish(self, event: ev.Event) -> None:
        if isinstance(event, ev.WorkerRegistered):
            self._registered(event)
        elif isinstance(event, ev.SessionDetached):
            session = event.session
            self.watches.notify(session)
            log.info("session detached", extra={"session_id": session.session_id,
                                                 "worker_id": session.worker.key.worker_id,
                                                 "reattach_timeout": session.options.reattach_timeout})
        elif isinstance(event, ev.SessionPlaced):
            session = event.session
            conn = self._connection(session.worker.key, session.worker.epoch)
            if conn is not None:
                self._send(conn, session.worker,
                           session_started=worker_pb2.SessionStarted(session=self.to_worker_pb(session)))
            self.metrics.session_placed(session.task_queue)
            self.metrics.resources_used(session.task_queue, resource_map(session.demand), +1)
            log.info("session placed", extra={"session_id": session.session_id, "task_queue": session.task_queue,
                                              "worker_id": session.worker.key.worker_id})
            if event.waiter_id is not None:
                wait = self._waits.pop(event.waiter_id, None)
                if wait is not None:
                    self.metrics.waiters(wait.task_queue, -1)
                    if not wait.future.done():
                        wait.future.set_result(session)
        elif isinstance(event, ev.SessionEnded):
            self._session_ended(event.session, event.epoch)
        elif isinstance(event, ev.WaiterFailed):
            wait = self._waits.pop(event.waiter_id, None)
            if wait is not None:
                self.metrics.waiters(wait.task_queue, -1)
                self.metrics.creation_rejected(wait.task_queue, event.error.reason)
                if not wait.future.done():
                    wait.future.set_exception(event.error)
        elif isinstance(event, ev.ActivityEnded):
            future = self._activities.pop(event.activity.activity_id, None)
            if future is not None and not future.done():
                future.set_exception(event.error)
            self._cancel_on_worker(event.activity, event.error.reason)

    def _waiter_refused(self, waiter_id: str, error: Exception) -> None:
        """A waiter's placement was refused by the store (replicas): its callers get the reason."""
        wait = self._waits.pop(waiter_id, None)
        if wait is not None:
            self.metrics.waiters(wait.task_queue, -1)
            if not wait.future.done():
                wait.future.set_exception(error)

    def _registered(self, event: ev.WorkerRegistered) -> None:
        worker = event.worker
        conn = self._connection(worker.key, worker.epoch)
        back = [s for s in event.reattached if s.state is SessionState.OPEN]
        if conn is not None:
            self._send(conn, worker, registered=worker_pb2.Registered(
                worker_id=worker.key.worker_id, recovery_window=duration(self.recovery_window),
                reattached_sessions=[self.to_worker_pb(s) for s in back], max_message_size=self._max_message_size))
        adopted = {s.session_id for s in event.adopted}
        for session in event.adopted:
            self.metrics.session_placed(session.task_queue)
            self.metrics.resources_used(session.task_queue, resource_map(session.demand), +1)
        for session in back:
            if conn is not None:
                for aid in sorted(session.activities):
                    task = self._held_tasks.pop(aid, None)
                    if task is not None:
                        held = task.heartbeat_details if task.HasField("heartbeat_details") else None
                        conn.put_task(aid, self._message(worker, activity_task=task),
                                      task_bytes(task.input, task.headers, task.activity_type, task.session_id, held))
            if session.session_id not in adopted:
                self.watches.notify(session)
            log.info("session adopted" if session.session_id in adopted else "session reattached",
                     extra={"session_id": session.session_id, "worker_id": worker.key.worker_id})

    def _session_ended(self, session: Session, epoch: int) -> None:
        conn = self._connection(session.worker.key, epoch)
        if conn is not None:
            failure = None
            if session.failure is not None:
                failure = session_pb2.Failure(cause=int(session.failure.cause),  # type: ignore[arg-type]
                                              message=session.failure.message)
            self._send(conn, session.worker, session_ended=worker_pb2.SessionEnded(
                session_id=session.session_id, state=int(session.state),  # type: ignore[arg-type]
                failure=failure))
        self.watches.notify(session)
        cause = session.failure.cause.name if session.failure is not None else None
        self.metrics.session_ended(session.task_queue, cause)
        self.metrics.resources_used(session.task_queue, resource_map(session.demand), -1)
        if session.failure is not None:
            self.failures.record(FailureRecord(
                session.closed_at if session.closed_at is not None else self.now(), session.session_id,
                session.task_queue, session.worker.key.worker_id, session.owner, session.failure.cause.name,
                session.failure.message))
        fields = {"session_id": session.session_id, "task_queue": session.task_queue,
                  "worker_id": session.worker.key.worker_id}
        if cause is None:
            log.info("session completed", extra=fields)
        else:
            log.info("session failed", extra={**fields, "cause": cause})

    def _token_queue(self, token: bytes) -> str:
        """The task queue a recreate token names, for metrics ("" for a token that does not decode)."""
        try:
            return self.signer.target(token, self.now()).worker.task_queue
        except SessionError:
            return ""


__all__ = ["Engine", "SessionError", "WorkerConnection"]
