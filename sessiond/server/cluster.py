"""One replica of a replicated sessiond (SPEC §6.5, distributed.md §3): the engine's side of the etcd store.

* **Reserve -> commit -> publish.** The core still decides synchronously (it reserves the slot);
  :meth:`Cluster.submit` makes the decisions of one engine step durable in the store and only then
  publishes them (SessionStarted to the worker, the caller's answer, watchers, metrics). Steps are
  published in the order they were taken. A placement the store refuses is aborted in the core
  (its slot goes to the next waiter) and its caller gets the store's reason.
* **Ownership.** A worker belongs to the replica holding its stream: on registration the replica
  claims the worker key (a fenced Txn), reads the sessions recorded on it at a revision after the
  claim, adopts those the worker still holds (same ids) and fails the others WORKER_LOST.
* **Fence lost.** When another replica takes a worker over, this one closes the worker's old stream
  and forgets what it ends (its ends are refused by the fence: the sessions live on elsewhere).
* **Self-fencing.** When the store fences itself (lease renewals stopped), the replica ends every
  worker stream (the workers hold their sessions and register at another replica) and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from sessiond_client.api.v1 import session_pb2

from sessiond.core import events as ev
from sessiond.core.errors import ExistingOpenSessionError, OwnerUnavailableError, SessionError, SessionNotFoundError
from sessiond.core.model import Session, Viewer, WorkerKey, WorkerRegistration
from sessiond.core.token import TokenKeys
from sessiond.server import auth
from sessiond.server.errors import PlacedElsewhereError
from sessiond.store.base import (
    ClaimWorker,
    CommitResult,
    EndSession,
    Outcome,
    PlaceSession,
    StoredSession,
    StoreOp,
)
from sessiond.store.etcd.errors import EtcdError

if TYPE_CHECKING:
    from sessiond.config import ServerConfig
    from sessiond.core.model import SessionRecord
    from sessiond.server.engine import Engine
    from sessiond.store.etcd.store import EtcdStore

__all__ = ["Cluster", "request_key_name"]

log = logging.getLogger("sessiond.cluster")

CLAIM_ATTEMPTS = 3
WHERE_CACHE = 100_000
"""Sessions whose worker a replica remembers for forwarding (each ≈ 200 bytes)."""
SERVICE = "sessiond.v1.SessionService"
FORWARDED = "sessiond-forwarded-by"
"""Metadata on a call one replica forwards to another: the receiver never forwards it again."""
_PASSED_ON = ("authorization", "traceparent", "tracestate")

R = TypeVar("R", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _has_reason(error: grpc.aio.AioRpcError) -> bool:
    """Whether the status carries sessiond's ErrorInfo (a real answer, not a transport failure)."""
    pairs = cast("Sequence[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    for key, value in pairs:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            with contextlib.suppress(Exception):
                return bool(status_pb2.Status.FromString(value).details)
    return False


def request_key_name(task_queue: str, worker_id: str, request_id: str, recreated: bool,
                     principal: str = "") -> str | None:
    """The store's name of a request id in its scope (the core's: per principal, then create per
    task queue or recreate per worker), or None without a request id."""
    if not request_id:
        return None
    scope = ("recreate", task_queue, worker_id) if recreated else ("create", task_queue)
    return "/".join(quote(part, safe="") for part in (principal, *scope, request_id))


def owner_key_name(principal: str, owner: str) -> str | None:
    """The store's name of an owner (one OPEN session per owner of a principal), or None."""
    if not owner:
        return None
    return f"{quote(principal, safe='')}/{quote(owner, safe='')}"


def _visible(session: session_pb2.Session, viewer: Viewer) -> bool:
    return viewer.sees_all or session.principal == viewer.principal


def _key(worker: WorkerKey) -> tuple[str, str]:
    return worker.task_queue, worker.worker_id


def _worker_lost(stored: StoredSession, why: str) -> EndSession:
    """The end of a stored OPEN session whose worker is gone: FAILED WORKER_LOST, now."""
    record = session_pb2.Session.FromString(stored.record)
    record.state = session_pb2.SESSION_STATE_FAILED
    record.failure.cause = session_pb2.FAILURE_CAUSE_WORKER_LOST
    record.failure.message = why
    record.close_time.FromNanoseconds(time.time_ns())
    return EndSession(stored.session_id, stored.worker, record.SerializeToString(),
                      owner_key_name(record.principal, record.owner),
                      request_key_name(record.task_queue, record.worker.worker_id, record.request_id,
                                       record.recreated, record.principal))


class Cluster:
    """The replica's glue between the engine and its :class:`~sessiond.store.etcd.store.EtcdStore`."""

    def __init__(self, engine: Engine, store: EtcdStore) -> None:
        self.engine = engine
        self.store = store
        self._loop = asyncio.get_running_loop()
        self._tail: asyncio.Task[None] | None = None
        self._placements: dict[str, asyncio.Future[None]] = {}
        self._ends: dict[str, asyncio.Future[Outcome]] = {}  # ends in flight: their commit outcome
        self.fenced = asyncio.Event()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._next_target = 0
        self._where: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._janitor: asyncio.Task[None] | None = None
        store.on_worker_lost.append(self._worker_lost)
        store.on_fenced.append(self._fenced)

    # ----------------------------------------------------------------- reserve -> commit -> publish

    def submit(self, events: Sequence[ev.Event]) -> None:
        """Commit what one engine step decided, then publish its events in order."""
        ops: list[StoreOp] = []
        for event in events:
            if isinstance(event, ev.SessionPlaced):
                session = event.session
                ops.append(PlaceSession(session.session_id, _key(session.worker.key), self._record(session),
                                        owner_key_name(session.principal, session.owner), self._request_name(session)))
                self._placements[session.session_id] = self._loop.create_future()
            elif isinstance(event, ev.SessionEnded):
                session = event.session
                ops.append(EndSession(session.session_id, _key(session.worker.key), self._record(session),
                                      owner_key_name(session.principal, session.owner), self._request_name(session)))
                self._ends[session.session_id] = self._loop.create_future()
        if not ops and self._tail is None:
            for event in events:
                self.engine._publish(event)
            return
        task = self._loop.create_task(self._commit_then_publish(self._tail, list(events), ops))
        self._tail = task
        task.add_done_callback(self._step_done)

    def _step_done(self, task: asyncio.Task[None]) -> None:
        if self._tail is task:
            self._tail = None
        if not task.cancelled() and task.exception() is not None:
            log.error("publishing a committed step failed", exc_info=task.exception())

    async def placed(self, session_id: str) -> None:
        """Wait until the placement of ``session_id`` is durable (raises the store's refusal)."""
        future = self._placements.get(session_id)
        if future is not None:
            await asyncio.shield(future)

    async def settled(self) -> None:
        """Wait until every step submitted so far is committed and published."""
        tail = self._tail
        if tail is not None:
            await asyncio.wait({tail})

    async def ended(self, session_id: str) -> Outcome:
        """Wait until every step submitted so far is published; return the commit outcome of the
        session's end among them (COMMITTED when none was in flight: the session was already
        terminal here, and that end's own caller heard its outcome; UNKNOWN when the replica fences
        itself first)."""
        future = self._ends.get(session_id)
        settled = asyncio.ensure_future(self.settled())
        fenced = asyncio.ensure_future(self.fenced.wait())
        try:
            # A replica that fences itself stops: its caller hears OWNER_UNAVAILABLE before that.
            await asyncio.wait({settled, fenced}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
            fenced.cancel()
        if future is None:
            return Outcome.COMMITTED
        return future.result() if future.done() else Outcome.UNKNOWN

    def _end_outcome(self, session_id: str, outcome: Outcome) -> None:
        future = self._ends.pop(session_id, None)
        if future is not None and not future.done():
            future.set_result(outcome)

    async def _commit_then_publish(self, previous: asyncio.Task[None] | None, events: list[ev.Event],
                                   ops: list[StoreOp]) -> None:
        try:
            results = await self.store.commit(ops) if ops else []
        except EtcdError as error:
            log.warning("store commit failed: %s", error)
            results = [CommitResult(Outcome.UNKNOWN)] * len(ops)
        if previous is not None:
            await asyncio.wait({previous})  # publish in the order the steps were taken
        outcome = iter(results)
        try:
            for event in events:
                if isinstance(event, ev.SessionPlaced):
                    await self._publish_placed(event, next(outcome))
                elif isinstance(event, ev.SessionEnded):
                    result = next(outcome)
                    sid = event.session.session_id
                    self._end_outcome(sid, result.outcome)
                    if sid not in self.engine.table._sessions:
                        continue  # its placement was refused: nothing to tell anyone
                    if result.outcome is Outcome.FENCE_LOST:
                        # Another replica owns the worker: the session lives on there. Forget it here.
                        self.engine.table.abort_placement(self.engine.now(), sid)
                        continue
                    self.engine._publish(event)
                else:
                    self.engine._publish(event)
        finally:
            # A step that failed half-way leaves no CompleteSession waiting for ever: its ends are unknown.
            for event in events:
                if isinstance(event, ev.SessionEnded):
                    self._end_outcome(event.session.session_id, Outcome.UNKNOWN)
        self.engine._flush()  # what an abort freed may have placed a waiter

    async def _publish_placed(self, event: ev.SessionPlaced, result: CommitResult) -> None:
        session = event.session
        sid = session.session_id
        future = self._placements.pop(sid, None)
        outcome = result.outcome
        if outcome is Outcome.UNKNOWN:
            with contextlib.suppress(EtcdError):
                stored = await self.store.read_session(sid)
                if stored is not None:
                    outcome = Outcome.COMMITTED
        if outcome is Outcome.COMMITTED:
            if sid in self.engine.table._sessions:
                self.engine._publish(event)
            if future is not None and not future.done():
                future.set_result(None)
            return
        error: Exception
        if outcome is Outcome.OWNER_TAKEN:
            error = ExistingOpenSessionError(session.owner, result.existing_session_id)
        elif outcome is Outcome.REQUEST_DONE and result.existing_session_id:
            error = PlacedElsewhereError(result.existing_session_id)
        else:
            error = OwnerUnavailableError(
                f"worker {session.worker.key.worker_id!r} is moving to another replica (or the store did not "
                "answer); retry", metadata={"worker_id": session.worker.key.worker_id})
        log.info("placement refused by the store", extra={"session_id": sid, "outcome": outcome.value})
        self.engine.table.abort_placement(self.engine.now(), sid)
        if future is not None and not future.done():
            future.set_exception(error)
            future.exception()  # retrieved here: a caller that gave up must not leave it unobserved
        if event.waiter_id is not None:
            self.engine._waiter_refused(event.waiter_id, error)

    def _record(self, session: Session) -> bytes:
        return self.engine.to_pb(session).SerializeToString()

    @staticmethod
    def _request_name(session: Session) -> str | None:
        return request_key_name(session.task_queue, session.worker.key.worker_id, session.request_id,
                                session.recreated, session.principal)

    # ----------------------------------------------------------------- ownership

    async def take_over(self, reg: WorkerRegistration, held: list[SessionRecord]) -> list[SessionRecord]:
        """Make this replica the worker's owner before its registration is handled; return the held
        sessions to adopt (those the store records as OPEN on it). Sessions the store has OPEN on the
        worker that it no longer holds are failed WORKER_LOST.

        Raises:
            OwnerUnavailableError: the store cannot be reached, or this replica is fenced.
        """
        key = WorkerKey(reg.task_queue, reg.worker_id)
        worker = _key(key)
        record = session_pb2.WorkerInfo(worker_id=reg.worker_id, task_queue=reg.task_queue, identity=reg.identity,
                                        host_name=reg.host_name)
        record.connect_time.FromNanoseconds(time.time_ns())
        try:
            for _ in range(CLAIM_ATTEMPTS):
                if self.fenced.is_set():
                    break
                snapshot = await self.store.load_worker_sessions(worker)
                if self.store.fence_of(worker) != snapshot.fence_revision or snapshot.fence_revision == 0:
                    [claimed] = await self.store.commit([ClaimWorker(worker, record.SerializeToString(),
                                                                     snapshot.fence_revision)])
                    if claimed.outcome is not Outcome.COMMITTED:
                        continue  # another replica claimed it in between: read again
                    snapshot = await self.store.load_worker_sessions(worker)  # at a revision after the claim
                return await self._reconcile(key, snapshot.sessions, held)
        except EtcdError as error:
            raise OwnerUnavailableError(f"the session store is unreachable ({error}); retry") from None
        raise OwnerUnavailableError("this replica could not take the worker over; retry another replica")

    async def _reconcile(self, key: WorkerKey, stored: Sequence[StoredSession], held: list[SessionRecord]
                         ) -> list[SessionRecord]:
        recorded = {s.session_id: s for s in stored}
        known = self.engine.table._sessions
        adopt = [r for r in held if r.session_id in recorded and r.session_id not in known]
        kept = {r.session_id for r in held}
        lost: list[StoreOp] = [
            _worker_lost(entry, "the worker no longer holds the session (its replica failed over)")
            for sid, entry in recorded.items() if sid not in kept and sid not in known]
        if lost:
            await self.store.commit(lost)
        if adopt:
            log.info("adopting sessions of worker %s from the store", key.worker_id,
                     extra={"worker_id": key.worker_id, "sessions": len(adopt)})
        return adopt

    # ----------------------------------------------------------------- the janitor

    async def start(self) -> None:
        """Register the replica in the store (and, unless a token key is configured, take the
        cluster's signing key from it: a recreate token or a worker's session report signed by one
        replica must verify at every other), then run the janitor."""
        await self.store.start()
        config = self.engine.config
        if config.token_key is None and config.token_key_file is None:
            self.engine.signer.use(TokenKeys(await self.store.cluster_secret("token_key")))
        self._janitor = asyncio.create_task(self._janitor_loop(), name="sessiond-janitor")

    async def _janitor_loop(self) -> None:
        """Fail the sessions of workers whose replica died and that did not come back within the
        failover window (distributed.md §3.5). Every replica runs it; the fenced Txn lets one win."""
        window = self.engine.recovery_window
        period = max(0.5, min(5.0, window / 4))
        while True:
            await asyncio.sleep(period)
            if self.fenced.is_set():
                return
            try:
                for replica_id, worker in await self.store.orphaned_workers(window):
                    await self._release_orphan(replica_id, worker)
            except EtcdError as error:
                log.warning("janitor: %s", error)

    async def _release_orphan(self, replica_id: str, worker: tuple[str, str]) -> None:
        if self.store.owner_of(worker) not in (replica_id, None):
            return  # taken over meanwhile
        snapshot = await self.store.load_worker_sessions(worker)
        ends = [_worker_lost(s, "its worker did not come back within the failover window after its replica died")
                for s in snapshot.sessions]
        if await self.store.release_orphan(replica_id, worker, snapshot.fence_revision, ends):
            log.warning("janitor: worker %s of dead replica %s did not come back; %d session(s) failed "
                        "WORKER_LOST", worker[1], replica_id, len(ends),
                        extra={"worker_id": worker[1], "task_queue": worker[0]})

    def _worker_lost(self, worker: tuple[str, str]) -> None:
        conn = self.engine._connections.get(WorkerKey(*worker))
        if conn is not None:
            log.warning("worker %s is owned by another replica now; closing its stream here", worker[1])
            conn.close()

    def _fenced(self, reason: str) -> None:
        log.error("replica fenced itself (%s): ending every worker stream; workers move to another replica",
                  reason)
        self.fenced.set()
        self.engine.begin_shutdown()

    # ----------------------------------------------------------------- forwarding and remote reads

    async def forward(self, method: str, request: Message, context: Context, session_id: str,
                      response_type: type[R]) -> R | session_pb2.Session:
        """Serve a session-scoped call for a session this replica does not hold: forward it to the
        replica owning the session's worker, with the caller's credentials and remaining deadline.
        Returns that replica's answer, or the stored session when no replica holds it and the stored
        version answers the call (GetSessionInfo; CompleteSession of a terminal session).

        Raises:
            SessionNotFoundError: the store has no such session.
            OwnerUnavailableError: the owner cannot be reached, or the worker is moving (retry).
        """
        forwarded = any(k == FORWARDED for k, _ in context.invocation_metadata() or ())
        worker = self._where.get(session_id)
        if worker is not None and not forwarded:
            address = self._address_of(worker)
            if address is not None:  # a session never changes worker: no store read on this path
                try:
                    return await self.call(address, method, request, context, response_type)
                except OwnerUnavailableError:
                    if method != "GetSessionInfo":
                        raise
                    # The owner is unreachable (dead, its lease not expired yet): the store answers.
                    worker = None
        found = await self.read(session_id)
        if found is None:
            raise SessionNotFoundError(session_id)
        session, _ = found
        self._remember(session_id, (session.task_queue, session.worker.worker_id))
        terminal = session.state != session_pb2.SESSION_STATE_OPEN
        address = self.owner_address(session)
        if not _visible(session, auth.current().viewer):
            raise SessionNotFoundError(session_id)
        if address is None or forwarded:
            if method == "GetSessionInfo" or (terminal and method == "CompleteSession"):
                return session
            raise OwnerUnavailableError(
                f"session {session_id!r}: its worker is not connected to any replica now (moving?); retry",
                metadata={"session_id": session_id})
        try:
            return await self.call(address, method, request, context, response_type)
        except OwnerUnavailableError:
            if method == "GetSessionInfo":
                return session  # as stored: the owner is unreachable
            raise

    async def call(self, address: str, method: str, request: Message, context: Context,
                   response_type: type[R]) -> R:
        """Call ``method`` of another replica's SessionService on the caller's behalf."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        stub = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=_serialize,
                                   response_deserializer=response_type.FromString)
        metadata = [(k, v) for k, v in context.invocation_metadata() or ()
                    if k in _PASSED_ON and isinstance(v, str)]
        metadata.append((FORWARDED, self.store.replica_id))
        try:
            return cast("R", await stub(request, timeout=context.time_remaining(), metadata=metadata))
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) \
                    and not _has_reason(error):
                raise OwnerUnavailableError(
                    f"the replica owning the session ({address}) did not answer: {error.details()}; retry "
                    "(an activity's outcome is unknown)") from None
            # grpc wants a plain tuple of pairs here (an aio Metadata is refused).
            trailing = tuple(cast("Sequence[tuple[str, str | bytes]]", error.trailing_metadata() or ()))
            await context.abort(error.code(), error.details() or "", trailing)
            raise  # abort raises; this line satisfies the type checker

    async def watch_remote(self, session_id: str, viewer: Viewer) -> AsyncIterator[session_pb2.Session]:
        """WatchSession of a session another replica holds: the stored version, then every change
        from the store's watch (no gap, no duplicate), ending after its terminal state."""
        found = await self.read(session_id)
        if found is None:
            raise SessionNotFoundError(session_id)
        session, revision = found
        if not _visible(session, viewer):
            raise SessionNotFoundError(session_id)
        yield session
        if session.state != session_pb2.SESSION_STATE_OPEN:
            return
        try:
            async for stored in self.store.watch_session(session_id, revision):
                session = session_pb2.Session.FromString(stored.record)
                yield session
                if session.state != session_pb2.SESSION_STATE_OPEN:
                    return
        except EtcdError as error:
            raise OwnerUnavailableError(f"the session store is unreachable ({error}); resubscribe") from None

    async def close(self) -> None:
        """Stop the janitor; close the channels to other replicas."""
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    async def read(self, session_id: str) -> tuple[session_pb2.Session, int] | None:
        """A session as the store has it (any replica's), and the revision of that version."""
        try:
            stored = await self.store.read_session(session_id)
        except EtcdError as error:
            raise OwnerUnavailableError(f"the session store is unreachable ({error}); retry") from None
        if stored is None:
            return None
        return session_pb2.Session.FromString(stored.record), stored.revision

    def owner_address(self, session: session_pb2.Session) -> str | None:
        """The address of the live replica owning the session's worker (None: none, or this one)."""
        return self._address_of((session.task_queue, session.worker.worker_id))

    def _address_of(self, worker: tuple[str, str]) -> str | None:
        owner = self.store.owner_of(worker)
        if owner is None or owner == self.store.replica_id:
            return None
        return self.store.replica_address(owner)

    def _remember(self, session_id: str, worker: tuple[str, str]) -> None:
        """Which worker a session is on (bounded, least recently used out first)."""
        self._where[session_id] = worker
        self._where.move_to_end(session_id)
        if len(self._where) > WHERE_CACHE:
            self._where.popitem(last=False)

    def recreate_target(self, token: bytes, context: Context) -> str | None:
        """Where a recreate goes: the live replica owning the token's worker when that is not this
        one (None: handle it here, including a worker connected nowhere, which it waits for)."""
        try:
            worker = self.engine.signer.target(token, self.engine.now()).worker
        except SessionError:
            return None
        if worker in self.engine._connections or any(k == FORWARDED for k, _ in context.invocation_metadata() or ()):
            return None
        return self._address_of((worker.task_queue, worker.worker_id))

    async def wait_for_worker(self, task_queue: str, context: Context, wait: float) -> str | None:
        """No replica has a worker of ``task_queue`` yet: wait up to ``wait`` seconds for one to
        register anywhere. Returns the address of the replica that got it (None: this replica, or
        none in time: the create is then handled here, where it waits for the rest of its time)."""
        if wait <= 0 or any(k == FORWARDED for k, _ in context.invocation_metadata() or ()):
            return None
        deadline = self._loop.time() + wait
        while not self._has_local(task_queue):
            target = self.create_target(task_queue, context)
            if target is not None:
                return target
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.store.workers_changed(), remaining)
        return None

    def knows_queue(self, task_queue: str) -> bool:
        """Whether any replica (this one included) has a worker of ``task_queue``."""
        return self._has_local(task_queue) or any(
            queue == task_queue for (queue, _), _owner in self.store.worker_owners())

    def _has_local(self, task_queue: str) -> bool:
        return any(key.task_queue == task_queue for key in self.engine._connections)

    def create_target(self, task_queue: str, context: Context) -> str | None:
        """Where a create goes when this replica has no worker of ``task_queue`` connected: a live
        replica that owns one (the least recently chosen), or None to handle it here (wait, or
        NO_CAPACITY). A forwarded create is always handled where it arrived."""
        if self._has_local(task_queue):
            return None
        if any(k == FORWARDED for k, _ in context.invocation_metadata() or ()):
            return None
        owners = sorted({owner for (queue, _), owner in self.store.worker_owners()
                         if queue == task_queue and owner != self.store.replica_id})
        addresses = [a for a in (self.store.replica_address(o) for o in owners) if a is not None]
        if not addresses:
            return None
        self._next_target = (self._next_target + 1) % len(addresses)
        return addresses[self._next_target]


async def open_store(config: ServerConfig, address: str) -> EtcdStore:
    """Connect to the etcd cluster of ``config.store`` with its TLS and user settings; the store is
    not started yet (that registers the replica).

    Raises:
        StartupError: a file cannot be read, or etcd cannot be reached or refuses the user.
    """
    from sessiond.server.startup import StartupError
    from sessiond.store.etcd import EtcdAuth, EtcdClient, EtcdTLS
    from sessiond.store.etcd.store import EtcdStore
    from sessiond.store.spec import EtcdStoreSpec

    spec = config.store_spec
    assert isinstance(spec, EtcdStoreSpec)
    try:
        tls = None
        if config.etcd_tls_ca is not None:
            tls = EtcdTLS(config.etcd_tls_ca.read_bytes(),
                          config.etcd_tls_cert.read_bytes() if config.etcd_tls_cert else None,
                          config.etcd_tls_key.read_bytes() if config.etcd_tls_key else None)
        auth = None
        if config.etcd_user is not None:
            password = config.etcd_password
            if config.etcd_password_file is not None:
                lines = config.etcd_password_file.read_text().splitlines()
                password = lines[0] if lines else ""
            auth = EtcdAuth(config.etcd_user, password or "")
    except OSError as error:
        raise StartupError(f"etcd settings: {error}") from None
    try:
        client = await EtcdClient.connect(spec.endpoints, tls=tls, auth=auth, timeout=5.0)
    except EtcdError as error:
        raise StartupError(f"store {spec}: {error}") from None
    return EtcdStore(client, spec.key_prefix, address, lease_ttl=spec.lease_ttl,
                     retention=config.retention.total_seconds())
