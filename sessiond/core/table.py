"""The session table: sessions and their lifecycle, workers, activities and expiry.

Pure: no I/O, no clock. Every method that depends on time takes ``now`` (monotonic seconds).
Mutations append :mod:`~sessiond.core.events` to an outbox that the caller drains with
:meth:`SessionTable.take_events`. Costs on the hot paths do not grow with the number of
workers or sessions: create and complete are O(log n), a heartbeat is O(1). Where a new session
may go is :mod:`~sessiond.core.placement`'s index; who waits for one, in what order, is
:mod:`~sessiond.core.waiters`'; sessions that outlive their worker's stream (detach, reattach,
adoption of reported sessions) are :mod:`~sessiond.core.reattach`'s, which changes sessions only
through this table's primitives.

Liveness is lazy and grouped. A heartbeat only stamps ``worker.last_seen``. A worker's open
sessions are grouped by heartbeat_timeout T; within a group, session s is due at
``max(last_seen, s.placed_at) + T``, which never decreases in placement order. So each group
has one deadline entry (its oldest session's), re-checked against the latest ``last_seen`` when
it comes due and re-armed if the worker spoke meanwhile: the cost of liveness grows with
workers × distinct timeouts, not with sessions. Each session keeps one entry of its own, at
``expire_at`` while open and at the end of retention after it closes.
"""

from __future__ import annotations

import bisect
import itertools
import math
import uuid
from collections.abc import Callable, Iterable

from sessiond.core.bindings import WorkerBindings
from sessiond.core.deadlines import DeadlineQueue, LowWater
from sessiond.core.errors import (
    ActivityAbortedError,
    ActivityHeartbeatTimeoutError,
    ActivityTimeoutError,
    CreationTimeoutError,
    ExistingOpenSessionError,
    IllegalTransitionError,
    NoCapacityError,
    PermissionDeniedError,
    RecoveringError,
    SessionClosedError,
    SessionError,
    SessionFailedError,
    SessionNotFoundError,
    TooManyWaitersError,
    WorkerIdInUseError,
    WorkerUnavailableError,
)
from sessiond.core.events import (
    ActivityEnded,
    Event,
    SessionEnded,
    SessionPlaced,
    WaiterFailed,
    WorkerGone,
    WorkerRegistered,
)
from sessiond.core.model import (
    ANYONE,
    TRANSITIONS,
    Activity,
    Failure,
    FailureCause,
    RequestKey,
    Session,
    SessionOptions,
    SessionRecord,
    SessionState,
    Viewer,
    Waiter,
    WaitingKind,
    Worker,
    WorkerKey,
    WorkerRegistration,
    create_request_key,
    recreate_request_key,
)
from sessiond.core.pauses import PauseLedger
from sessiond.core.placement import MAX_SKIPS, Placer
from sessiond.core.reattach import Reattachment
from sessiond.core.registry import WorkerRegistry
from sessiond.core.resources import ResourceVector
from sessiond.core.selector import EVERYTHING, Selector
from sessiond.core.token import Signer
from sessiond.core.waiters import WaiterQueues

# A connected worker silent for this many heartbeat intervals takes no new sessions until it speaks.
STALE_INTERVALS = 3.0

_FAILURE_TEXT = {
    FailureCause.WORKER_LOST: "the worker's stream ended without a goodbye",
    FailureCause.HEARTBEAT_TIMEOUT: "no heartbeat from the worker within heartbeat_timeout",
    FailureCause.EXECUTION_TIMEOUT: "the session reached its execution_timeout",
    FailureCause.WORKER_SHUTDOWN: "the worker shut down while the session was open",
    FailureCause.CALLER_LOST: "no caller attended the session (no watch, no RPC) within caller_timeout",
}


_ONE_SESSION = ResourceVector.one_session()


def _uuid() -> str:
    return str(uuid.uuid4())


class ActivityIds:
    """Activity ids, cheaply: UUID4-shaped strings, a random prefix per table and a counter.

    An activity id only has to be unique (the worker fences on it, and an outcome is matched to
    the worker and stream that got the task), not unguessable like a session id; ``uuid4()`` costs
    a ``getrandom`` call and a formatting per activity, this a counter and one f-string. The
    prefix keeps the version and variant digits of a real UUID4, and is new for every table (so
    for every server start: a task still running on a worker from before a restart keeps its id).
    """

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-": 12 hex digits left
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count) & 0xFFFF_FFFF_FFFF:012x}"


class SessionTable:
    """All sessions, workers and waiters of one sessiond process."""

    def __init__(
        self,
        *,
        retention: float = 600.0,
        max_heartbeat_interval: float = 10.0,
        new_id: Callable[[], str] | None = None,
        max_waiters: int | None = None,
        max_waiters_per_queue: int | None = None,
        recovering_until: float = -math.inf,
        signer: Signer | None = None,
        max_skips: int = MAX_SKIPS,
    ) -> None:
        """Create an empty table.

        Args:
            retention: seconds a FAILED or CLOSED session stays readable.
            max_heartbeat_interval: the longest heartbeat interval a worker is given.
            new_id: id factory for sessions, waiters and activities (default: UUID4 for sessions and
                waiters, :class:`ActivityIds` for activities).
            max_waiters: most Creates/Recreates waiting at once, all queues together (None = no cap).
            max_waiters_per_queue: most waiting at once per task queue (None = no cap).
            recovering_until: the end of the recovery window of a restarted server: until then an
                unknown session id may still be reported by its worker (RECOVERING, not NOT_FOUND),
                and sessions that registering workers report are adopted.
            signer: signs and checks recreate tokens (default: a random key of this table's own).
            max_skips: how often a waiting Create may be passed by later ones before it holds
                the workers it could use (see :mod:`sessiond.core.placement`).
        """
        self.retention = retention
        self.max_heartbeat_interval = max_heartbeat_interval
        self.recovering_until = recovering_until
        self._new_id = new_id or _uuid
        self._new_activity_id = new_id or ActivityIds()
        self.registry = WorkerRegistry()
        self.signer = signer or Signer()
        # worker key -> the principal that registered it (kept for `retention` after it went away).
        self._bindings = WorkerBindings(grace=retention)
        self._sessions: dict[str, Session] = {}
        self._seq = itertools.count(1)
        # Listing order: seqs ascending (append-only; forgotten ones are skipped and compacted away).
        self._seqs: list[int] = []
        self._by_seq: dict[int, Session] = {}
        # The earliest deadline set on any queue below since the last take_new_deadline().
        self._low_water = LowWater()
        self._session_deadlines: DeadlineQueue[str] = DeadlineQueue(self._low_water)
        self._liveness_deadlines: DeadlineQueue[tuple[WorkerKey, float]] = DeadlineQueue(self._low_water)
        self._activity_deadlines: DeadlineQueue[str] = DeadlineQueue(self._low_water)
        self._worker_deadlines: DeadlineQueue[WorkerKey] = DeadlineQueue(self._low_water)
        # Caller liveness, one entry per OPEN session with a caller_timeout, re-armed lazily: an RPC
        # only stamps session.caller_seen (O(1)); the entry is re-checked when it comes due.
        self._caller_deadlines: DeadlineQueue[str] = DeadlineQueue(self._low_water)
        # Detached sessions, their reattach deadlines, and adoption of reported sessions.
        self._reattachment = Reattachment(self, self._low_water)
        self.waiting = WaiterQueues(self._low_water)
        self.placer = Placer(self.registry.candidates, self.waiting, max_skips=max_skips)
        # Task queues whose holding waiter left: serve all their waiting Creates again.
        self._released: set[str] = set()
        # (principal, owner) -> its OPEN session or waiting create: owner keys are per principal.
        self._owners: dict[tuple[str, str], Session | Waiter] = {}
        self._requests: dict[RequestKey, Session | Waiter] = {}
        self._activities: dict[str, Activity] = {}
        self._events: list[Event] = []
        self.max_waiters = max_waiters
        self.max_waiters_per_queue = max_waiters_per_queue
        # The server's own pauses: liveness does not count them as worker silence.
        self.pauses = PauseLedger()

    # ----------------------------------------------------------------- outbox and time

    def take_events(self) -> list[Event]:
        """Return and clear the events produced since the last call."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`advance` has something to do, or None."""
        # Called after every mutation (the engine re-arms its timer): no temporary list.
        best = self.waiting.next_deadline()
        for queue in (self._session_deadlines, self._liveness_deadlines, self._activity_deadlines,
                      self._worker_deadlines, self._caller_deadlines, self._reattachment.deadlines):
            t = queue.peek()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def take_new_deadline(self) -> float | None:
        """The earliest deadline set since the previous call (None: none was set), and start again.

        Removing or passing a deadline never makes :meth:`next_deadline` earlier, so a timer armed
        at ``next_deadline()`` must be re-armed sooner only when this is before it: the O(1) check
        after every change, where ``next_deadline()`` peeks every queue. (A deadline set and removed
        again in between is reported too: a timer armed for it finds nothing due, which is harmless.)
        """
        low = self._low_water.take()
        return None if low == math.inf else low

    def server_paused(self, start: float, end: float) -> None:
        """The server observed nothing from ``start`` to ``end`` (its own stall; measured by the
        caller). Liveness credits that span to every worker: a worker fails HEARTBEAT_TIMEOUT only
        after ``heartbeat_timeout`` of silence the server could have observed, so what it sent
        during the pause is read before it is judged. Caller deadlines do not move."""
        self.pauses.add(start, end)

    def advance(self, now: float) -> None:
        """Apply every deadline that is due at ``now`` (exactly at the deadline counts as due)."""
        # Staleness first: a session failing below frees a slot, and a worker that has been silent
        # for STALE_INTERVALS intervals by now must already be suspect so the slot is not handed out.
        for key in self._worker_deadlines.pop_due(now):
            worker = self.registry.workers[key]
            since = max(worker.last_seen, worker.interval_since)
            stale_at = since + STALE_INTERVALS * worker.interval + self.pauses.since(since)
            if now >= stale_at:
                worker.suspect = True
                self.registry.touch(worker)
            else:
                self._worker_deadlines.set(key, stale_at)
        # Execution timeouts before liveness: when both are due at once, EXECUTION_TIMEOUT is the cause.
        for sid in self._session_deadlines.pop_due(now):
            self._session_due(now, self._sessions[sid])
        for key, timeout in self._liveness_deadlines.pop_due(now):
            self._liveness_due(now, self.registry.workers[key], timeout)
        self._reattachment.expire(now)
        for sid in self._caller_deadlines.pop_due(now):
            self._caller_due(now, self._sessions[sid])
        for waiter in self.waiting.pop_due(now):
            self._expire_waiter(waiter)
        self._serve_released(now)
        for aid in self._activity_deadlines.pop_due(now):
            activity = self._activities.pop(aid)
            self._sessions[activity.session_id].activities.discard(aid)
            self._events.append(ActivityEnded(activity, _activity_timeout(now, activity)))

    def _session_due(self, now: float, session: Session) -> None:
        if session.state is not SessionState.OPEN:
            self._forget(session)
            return
        self._end(now, session, SessionState.FAILED, FailureCause.EXECUTION_TIMEOUT)

    def _liveness_due(self, now: float, worker: Worker, timeout: float) -> None:
        """Fail the sessions of one liveness group whose worker has been silent for ``timeout``."""
        group = worker.liveness[timeout]
        for session in list(group.values()):
            anchor = max(worker.last_seen, session.live_from)
            # Group order: every later session is due later still (a later anchor is credited
            # less pause, but never by more than it is later).
            if anchor + timeout + self.pauses.since(anchor) > now:
                break
            self._end(now, session, SessionState.FAILED, FailureCause.HEARTBEAT_TIMEOUT)
        self._arm_liveness(worker, timeout)

    def _arm_liveness(self, worker: Worker, timeout: float) -> None:
        group = worker.liveness.get(timeout)
        if group:
            oldest = next(iter(group.values()))
            anchor = max(worker.last_seen, oldest.live_from)
            self._liveness_deadlines.set((worker.key, timeout), anchor + timeout + self.pauses.since(anchor))

    def _caller_due(self, now: float, session: Session) -> None:
        """Fail a session nobody attended for its caller_timeout (a watch or an activity attends)."""
        if session.state is not SessionState.OPEN:
            return
        timeout = session.options.caller_timeout
        if session.watchers or session.activities:
            self._caller_deadlines.set(session.session_id, now + timeout)
        elif (due := session.caller_seen + timeout + self.pauses.since(session.caller_seen)) > now:
            # The server's own pauses are not the caller's silence either.
            self._caller_deadlines.set(session.session_id, due)
        else:
            self._end(now, session, SessionState.FAILED, FailureCause.CALLER_LOST)

    # ----------------------------------------------------------------- workers

    def connect_worker(self, now: float, reg: WorkerRegistration, held: Iterable[SessionRecord] = (), *,
                       adopt_held: bool = False) -> Worker:
        """Register a worker stream; emits :class:`WorkerRegistered` first, then any placements.

        A previous stream with the same key that is still live (heard within STALE_INTERVALS
        intervals) makes this registration fail with :class:`WorkerIdInUseError`, displacing
        nothing, unless it comes from the same worker process (``instance_id``). A stale or
        same-process one is dropped as if it had disconnected. The new stream then gets back the
        key's detached sessions (oldest first, as many as its capacity holds; the rest fail
        WORKER_LOST), and during the recovery window the ``held`` sessions this table does not
        know are adopted. Held sessions the table knows are settled already: re-attached above if
        they were detached here, else ended (the worker is not told they are its own).
        ``adopt_held`` adopts them outside the recovery window too: a replica taking a worker over
        passes only the held sessions its store records as OPEN on that worker (SPEC §6.5).
        """
        key = WorkerKey(reg.task_queue, reg.worker_id)
        self._bindings.check(now, key, reg.principal)  # another principal's worker_id: PERMISSION_DENIED
        old = self.registry.workers.get(key)
        if old is not None:
            since = max(old.last_seen, old.interval_since)
            stale_at = since + STALE_INTERVALS * old.interval + self.pauses.since(since)
            if now < stale_at and not (reg.instance_id and reg.instance_id == old.instance_id):
                raise WorkerIdInUseError(key.task_queue, key.worker_id, stale_at - now)
            self._release_worker(now, old, replaced=True)
        worker = self.registry.connect(key, reg.identity, reg.host_name, reg.capacity, now, reg.labels)
        worker.instance_id = reg.instance_id
        worker.principal = reg.principal
        self._bindings.bind(key, reg.principal)
        worker.interval = self.max_heartbeat_interval
        worker.interval_since = now
        self._worker_deadlines.set(key, now + STALE_INTERVALS * worker.interval)
        registered = WorkerRegistered(worker, ())
        self._events.append(registered)  # first: its message precedes every other on the stream
        reattached = self._reattachment.reattach(now, worker)
        adopted: list[Session] = []
        if adopt_held or now < self.recovering_until:
            # Serves no waiter: _serve below hands out what is left once every report is in.
            adopted = self._reattachment.adopt_reports(now, worker, held)
        if reattached or adopted:
            index = self._events.index(registered)
            self._events[index] = WorkerRegistered(worker, (*reattached, *adopted), tuple(adopted))
            self._update_interval(now, worker)
        self._serve(now, worker)
        return worker

    def adopt_session(self, now: float, key: WorkerKey, epoch: int, record: SessionRecord) -> Session:
        """Take a session this table does not know into the table, on the worker connected as
        ``key`` at ``epoch``: the worker holds it (a restarted server rebuilding from reports; a
        replica taking over a worker, SPEC §6.5). The same checks as placement: the slot must be
        free (hard limit), the owner must not hold another OPEN session; a request id already
        taken keeps its session (the adopted one is reachable by id only). A session whose
        ``expire_at`` has passed is adopted and failed with EXECUTION_TIMEOUT at once.

        Raises:
            AdoptionRefusedError: nothing changed; the worker must drop the session.
        """
        return self._reattachment.adopt(now, key, epoch, record, serve=True)

    def decline_session(self, now: float, key: WorkerKey, epoch: int, session_id: str) -> None:
        """The worker gives back a session it holds: it FAILS with WORKER_LOST. A no-op for a
        fenced connection or a session that is not OPEN on that worker."""
        self._reattachment.decline(now, key, epoch, session_id)

    def worker(self, key: WorkerKey, epoch: int) -> Worker | None:
        """The worker connected as ``key`` at ``epoch``, or None (fenced: replaced or gone)."""
        worker = self.registry.workers.get(key)
        return worker if worker is not None and worker.epoch == epoch else None

    def worker_seen(self, now: float, key: WorkerKey, epoch: int) -> Worker | None:
        """Record that the worker spoke. O(1). Returns None for a fenced (stale) connection."""
        worker = self.worker(key, epoch)
        if worker is None:
            return None
        worker.last_seen = now
        if worker.suspect:
            worker.suspect = False
            self.registry.touch(worker)
            self._worker_deadlines.set(key, now + STALE_INTERVALS * worker.interval)
            self._serve(now, worker)
        return worker

    def worker_backlogged(self, now: float, key: WorkerKey, epoch: int, backlogged: bool) -> None:
        """The worker's stream stopped (or resumed) taking what is queued for it. A backlogged
        worker takes no new sessions, so nothing more piles up for a worker that does not read;
        once it drains, waiters may be placed on it again."""
        worker = self.worker(key, epoch)
        if worker is None or worker.backlogged == backlogged:
            return
        worker.backlogged = backlogged
        self.registry.touch(worker)
        if not backlogged:
            self._serve(now, worker)

    def worker_goodbye(self, now: float, key: WorkerKey, epoch: int, *, drain: bool) -> None:
        """The worker is shutting down: no new sessions; without drain its open sessions fail now."""
        worker = self.worker(key, epoch)
        if worker is None:
            return
        worker.last_seen = now
        worker.draining = True
        self.registry.touch(worker)
        if not drain:
            for sid in list(worker.sessions):
                self._end(now, self._sessions[sid], SessionState.FAILED, FailureCause.WORKER_SHUTDOWN)

    def disconnect_worker(self, now: float, key: WorkerKey, epoch: int) -> None:
        """The worker's stream ended. After a goodbye its open sessions fail WORKER_SHUTDOWN;
        otherwise those with a reattach_timeout detach (OPEN, slot kept, in-flight activities
        aborted WORKER_DETACHED) and the others fail WORKER_LOST."""
        worker = self.worker(key, epoch)
        if worker is None:
            return
        self._release_worker(now, worker)

    def drop_worker(self, now: float, key: WorkerKey) -> tuple[list[Session], list[Activity]]:
        """Another replica owns the worker now (SPEC §6.5): its open sessions live on there. Forget
        them and the worker here without an event (no end, no detach: nothing happened to them), so
        that later calls about them are not answered from this table. Slots, owner keys and request
        ids are released; no waiter is placed on the worker (it is gone from here first).

        Returns the forgotten sessions and the activities that were in flight on them: the caller
        fails those (and the sessions' local watches) with a retryable error.
        """
        worker = self.registry.workers.get(key) or self._reattachment.parked(key)
        if worker is None:
            return [], []
        if self.registry.workers.get(key) is worker:
            self.registry.remove(worker)  # first: releasing its slots below must not place a waiter on it
            self._worker_deadlines.remove(key)
        sessions = [self._sessions[sid] for sid in sorted(worker.sessions, key=lambda x: self._sessions[x].seq)]
        activities = [self._activities[aid] for session in sessions for aid in sorted(session.activities)]
        for session in sessions:
            self.abort_placement(now, session.session_id)  # (the last one unparks the worker)
        self._unbind_if_gone(now, key, quiet=True)
        return sessions, activities

    def _release_worker(self, now: float, worker: Worker, *, replaced: bool = False) -> None:
        # Mark it gone first, so releasing its slots below cannot place a waiter on it.
        worker.connected = False
        self.registry.touch(worker)
        cause = FailureCause.WORKER_SHUTDOWN if worker.draining else FailureCause.WORKER_LOST
        for sid in sorted(worker.sessions, key=lambda x: self._sessions[x].seq):
            session = self._sessions[sid]
            if worker.draining or session.options.reattach_timeout <= 0:
                self._end(now, session, SessionState.FAILED, cause)
            else:
                self._reattachment.detach(now, session)
        self.registry.remove(worker)
        self._worker_deadlines.remove(worker.key)
        self._reattachment.park(worker)
        self._unbind_if_gone(now, worker.key, quiet=replaced)

    def _unbind_if_gone(self, now: float, key: WorkerKey, *, quiet: bool = False) -> None:
        """Start the binding's grace period once neither a stream nor detached sessions hold ``key``;
        then, unless ``quiet`` (the worker moved to another replica, or a new stream replaces this
        one), say it is gone."""
        if key not in self.registry.workers and not self._reattachment.holds(key):
            self._bindings.release(now, key)
            if not quiet:
                self._events.append(WorkerGone(key))

    # ----------------------------------------------------------------- sessions

    def get(self, session_id: str) -> Session:
        """The session, or :class:`SessionNotFoundError`."""
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFoundError(session_id)
        return session

    def lookup(self, now: float, session_id: str, viewer: Viewer = ANYONE) -> Session:
        """The session a caller asks about, which also attends it (caller liveness).

        Raises:
            RecoveringError: unknown id during the recovery window (its worker may still report it).
            SessionNotFoundError: unknown id after it, or a session ``viewer`` may not see (another
                principal's: its existence is not revealed).
        """
        session = self._sessions.get(session_id)
        if session is not None and not viewer.may_see(session):
            session = None
        if session is None:
            if now < self.recovering_until:
                raise RecoveringError(
                    f"session {session_id!r} is not known (yet): the server restarted and is still taking "
                    "reports from reconnecting workers; retry",
                    metadata={"session_id": session_id},
                )
            raise SessionNotFoundError(session_id)
        session.caller_seen = now
        return session

    def caller_seen(self, now: float, session_id: str) -> None:
        """An RPC on the session just ended (an activity's result went back): it attended until now."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.caller_seen = now

    def watch_started(self, now: float, session_id: str, viewer: Viewer = ANYONE) -> Session:
        """A WatchSession opened on the session: it is attended while the watch lasts."""
        session = self.lookup(now, session_id, viewer)
        session.watchers += 1
        return session

    def watch_ended(self, now: float, session: Session) -> None:
        """A WatchSession on the session ended; the caller_timeout counts from now."""
        session.watchers -= 1
        session.caller_seen = now

    def create(self, now: float, task_queue: str, options: SessionOptions, *, owner: str = "",
               request_id: str = "", max_wait: float | None = None,
               demand: ResourceVector = _ONE_SESSION, selector: Selector = EVERYTHING, principal: str = "",
               ) -> Session | Waiter:
        """Place a session on the most free worker of ``task_queue`` that matches ``selector`` and has
        ``demand`` free, or enqueue a waiter (see :mod:`sessiond.core.placement` for the policy).

        Returns the session when placed at once, else a :class:`Waiter` whose outcome comes later
        as :class:`SessionPlaced` or :class:`WaiterFailed`. A retry with the same ``request_id``
        returns the same session or waiter. ``max_wait`` caps the wait below ``creation_timeout``
        (the caller's RPC deadline) without changing the options the session records. The session
        belongs to ``principal``; owner keys and request ids are that principal's own.
        """
        request_key = create_request_key(principal, task_queue, request_id)
        earlier = self._requests.get(request_key) if request_key else None
        if earlier is not None:
            return earlier
        self._check_owner(principal, owner)
        seq = self.waiting.arrival()
        # FIFO per kind: a request queues behind an earlier one that asks for the same thing.
        if not self.waiting.has_kind(task_queue, demand, selector):
            worker = self.placer.choose(task_queue, demand, selector, seq)
            if worker is not None:
                return self._place(now, worker, options, owner, request_id, None, request_key, demand=demand,
                                   selector=selector, seq=seq, principal=principal)
        wait = _wait(options, max_wait)
        if wait <= 0:
            raise NoCapacityError(self.placer.no_room(task_queue, demand, selector, "has"))
        return self._enqueue(now, task_queue, None, options, owner, request_id, wait, request_key, demand=demand,
                             selector=selector, seq=seq, principal=principal)

    def recreate(self, now: float, token: bytes, options: SessionOptions, *, owner: str = "",
                 request_id: str = "", max_wait: float | None = None,
                 demand: ResourceVector = _ONE_SESSION, principal: str = "") -> Session | Waiter:
        """Place a new session asking for ``demand`` on the worker ``token`` names, or wait for it to have room.

        The token must be signed by this table's signer; it names a worker and the principal that
        worker registered as: a worker with the same id registered by another principal is not it.
        The new session belongs to ``principal`` (the recreating caller).
        """
        target = self.signer.target(token, now)
        key = target.worker
        request_key = recreate_request_key(principal, key, request_id)
        earlier = self._requests.get(request_key) if request_key else None
        if earlier is not None:
            return earlier
        self._check_owner(principal, owner)
        worker = self.registry.workers.get(key)
        if worker is not None and worker.principal != target.principal:
            worker = None  # the id is someone else's now: wait for the token's worker
        if worker is not None and worker.eligible and worker.free.covers(demand):
            # FIFO per worker: behind earlier Recreates, except those this worker could never hold.
            ahead = self.waiting.for_worker(key)
            if not ahead or not any(not w.done and worker.capacity.covers(w.demand) for w in ahead):
                return self._place(now, worker, options, owner, request_id, None, request_key, recreated=True,
                                   demand=demand, principal=principal)
        wait = _wait(options, max_wait)
        if wait <= 0:
            if worker is not None and worker.eligible:
                capacity = "" if worker.capacity.covers(demand) else f" (its capacity: {worker.capacity})"
                raise NoCapacityError(f"worker {key.worker_id!r} has no room for {demand}{capacity}")
            state = "is not connected" if worker is None else "is not taking sessions (draining, silent or backlogged)"
            raise WorkerUnavailableError(f"worker {key.worker_id!r} of task queue {key.task_queue!r} {state}")
        return self._enqueue(now, key.task_queue, key, options, owner, request_id, wait, request_key, demand=demand,
                             selector=EVERYTHING, seq=self.waiting.arrival(), principal=principal,
                             target_principal=target.principal)

    def cancel_waiter(self, now: float, *waiter_ids: str) -> None:
        """The callers gave up waiting: the waiters leave their queues and will take no slot.

        Several at once leave together before anything else is placed (a holding one leaving may
        let the others' workers take the rest: none of the cancelled is among them).
        """
        for waiter_id in waiter_ids:
            waiter = self.waiting.get(waiter_id)
            if waiter is not None:
                self._drop_waiter(waiter)
        self._serve_released(now)

    def complete(self, now: float, session_id: str, viewer: Viewer = ANYONE) -> Session:
        """Close an OPEN session and free its slot; a no-op on FAILED and CLOSED sessions."""
        session = self.lookup(now, session_id, viewer)
        if session.state is SessionState.OPEN:
            self._end(now, session, SessionState.CLOSED, None)
        return session

    def abort_placement(self, now: float, session_id: str) -> Session | None:
        """The store refused to make a placement durable (SPEC §6.5: reserve -> commit -> publish):
        the session never existed for anyone. Its slot, owner and request id are released, it leaves
        every index, no event is emitted for it, and the freed slot goes to the next waiter. A
        session the table ended meanwhile (its worker left before the commit answered) is only
        forgotten: its slot was released by that end, whose event the publisher must drop too.

        Returns the session as it was (None when the table does not know the id).
        """
        session = self._sessions.get(session_id)
        if session is None:
            return None
        worker = session.worker
        if session.state is SessionState.OPEN:
            self._unlink(session)
            self._reattachment.settle(session)
            self._caller_deadlines.remove(session_id)
            for aid in sorted(session.activities):
                self._activity_deadlines.remove(aid)
                self._activities.pop(aid, None)
            session.activities.clear()
        if session.owner and self._owners.get((session.principal, session.owner)) is session:
            del self._owners[(session.principal, session.owner)]
        self._session_deadlines.remove(session_id)
        self._forget(session)
        if worker.connected and self.registry.workers.get(worker.key) is worker:
            self.registry.touch(worker)
            self._update_interval(now, worker)
            self._serve(now, worker)
        return session

    def _check_owner(self, principal: str, owner: str) -> None:
        # During a recovery window the owner's earlier session may not be reported yet; creates are
        # not held up for it (that would stall every owner for the whole window after any start):
        # if it is reported later, the owner's newer session wins and the report is refused.
        if not owner:
            return
        holder = self._owners.get((principal, owner))
        if holder is not None:
            raise ExistingOpenSessionError(owner, holder.session_id if isinstance(holder, Session) else None)

    def _enqueue(self, now: float, task_queue: str, target: WorkerKey | None, options: SessionOptions, owner: str,
                 request_id: str, wait: float, request_key: RequestKey, *, demand: ResourceVector,
                 selector: Selector, seq: int, principal: str, target_principal: str = "") -> Waiter:
        if self.max_waiters is not None and len(self.waiting) >= self.max_waiters:
            raise TooManyWaitersError(task_queue, self.max_waiters, "in all task queues")
        if self.max_waiters_per_queue is not None and self.waiting.count(task_queue) >= self.max_waiters_per_queue:
            raise TooManyWaitersError(task_queue, self.max_waiters_per_queue, f"on task queue {task_queue!r}")
        waiter = Waiter(self._new_id(), task_queue, target, options, owner, request_id, now + wait,
                        request_key=request_key, since=now, demand=demand, selector=selector, seq=seq,
                        principal=principal, target_principal=target_principal)
        self.waiting.add(waiter)
        if owner:
            self._owners[(principal, owner)] = waiter
        if request_key:
            self._requests[request_key] = waiter
        return waiter

    def _expire_waiter(self, waiter: Waiter) -> None:
        self._drop_waiter(waiter)
        if waiter.target is not None:
            error: SessionError = WorkerUnavailableError(
                f"worker {waiter.target.worker_id!r} of task queue {waiter.target.task_queue!r} "
                f"had no room for {waiter.demand} (or was not connected) within creation_timeout"
                if waiter.demand != _ONE_SESSION else
                f"worker {waiter.target.worker_id!r} of task queue {waiter.target.task_queue!r} "
                "had no free slot (or was not connected) within creation_timeout")
        else:
            error = CreationTimeoutError(self.placer.no_room(waiter.task_queue, waiter.demand, waiter.selector, "had",
                                                       " within creation_timeout"))
        self._events.append(WaiterFailed(waiter.waiter_id, error))

    def _drop_waiter(self, waiter: Waiter) -> None:
        if self.waiting.drop(waiter):
            self._released.add(waiter.task_queue)
        if waiter.owner and self._owners.get((waiter.principal, waiter.owner)) is waiter:
            del self._owners[(waiter.principal, waiter.owner)]
        if waiter.request_key and self._requests.get(waiter.request_key) is waiter:
            del self._requests[waiter.request_key]

    def _place(self, now: float, worker: Worker, options: SessionOptions, owner: str, request_id: str,
               waiter_id: str | None, request_key: RequestKey, *, recreated: bool = False,
               demand: ResourceVector = _ONE_SESSION, selector: Selector = EVERYTHING,
               seq: int = 0, principal: str = "") -> Session:
        # The hard limit: callers found room, and nothing ran in between (the core is synchronous).
        if not worker.free.covers(demand):
            raise IllegalTransitionError(f"worker {worker.key.worker_id} has no room for {demand}")
        if not recreated:
            self.placer.placing(worker.key.task_queue, seq, worker, demand)
        session = Session(
            session_id=self._new_id(), seq=next(self._seq), task_queue=worker.key.task_queue,
            worker=worker, options=options, owner=owner, request_id=request_id, placed_at=now,
            expire_at=now + options.execution_timeout, demand=demand, selector=selector, request_key=request_key,
            recreated=recreated, principal=principal,
        )
        self._install(now, worker, session)
        self._events.append(SessionPlaced(session, waiter_id))
        self._update_interval(now, worker)
        return session

    def _place_waiter(self, now: float, worker: Worker, waiter: Waiter) -> None:
        self._drop_waiter(waiter)
        self._place(now, worker, waiter.options, waiter.owner, waiter.request_id, waiter.waiter_id,
                    waiter.request_key, recreated=waiter.target is not None, demand=waiter.demand,
                    selector=waiter.selector, seq=waiter.seq, principal=waiter.principal)

    def _install(self, now: float, worker: Worker, session: Session) -> None:
        """Enter a new OPEN session into every index: placement and adoption both end here."""
        sid = session.session_id
        self._sessions[sid] = session
        self._seqs.append(session.seq)
        self._by_seq[session.seq] = session
        self._link(now, worker, session)
        if session.owner:
            self._owners[(session.principal, session.owner)] = session
        if session.request_key:
            self._requests[session.request_key] = session
        self._session_deadlines.set(sid, session.expire_at)
        session.caller_seen = now
        if session.options.caller_timeout > 0:
            self._caller_deadlines.set(sid, now + session.options.caller_timeout)

    def _link(self, now: float, worker: Worker, session: Session) -> None:
        """Put an OPEN session on a connected worker: its slot and its liveness group."""
        session.worker = worker
        worker.used = worker.used + session.demand
        worker.sessions.add(session.session_id)
        session.live_from = now
        timeout = session.options.heartbeat_timeout
        group = worker.liveness.get(timeout)
        if group is None:
            group = worker.liveness[timeout] = {}
            self._liveness_deadlines.set((worker.key, timeout), max(worker.last_seen, now) + timeout)
        group[session.session_id] = session
        self.registry.touch(worker)

    def _unlink(self, session: Session) -> None:
        """Take a session off its worker: release its slot (exactly once per link)."""
        worker = session.worker
        worker.used = worker.used - session.demand
        worker.sessions.discard(session.session_id)
        self._leave_liveness(session)
        self._reattachment.unlinked(worker)

    def _leave_liveness(self, session: Session) -> None:
        worker = session.worker
        timeout = session.options.heartbeat_timeout
        group = worker.liveness.get(timeout)
        if group is None or group.pop(session.session_id, None) is None:
            return  # detached: it left its group then
        if not group:
            del worker.liveness[timeout]
            self._liveness_deadlines.remove((worker.key, timeout))

    def _end(self, now: float, session: Session, state: SessionState, cause: FailureCause | None, *,
             serve: bool = True) -> None:
        """Leave OPEN: release the slot, the owner key and the activities; then, unless ``serve`` is
        False (the caller serves the worker itself once it is done), hand the slot to waiters."""
        if state not in TRANSITIONS[session.state]:
            raise IllegalTransitionError(f"session {session.session_id}: {session.state.name} -> {state.name}")
        session.state = state
        session.closed_at = now
        if cause is not None:
            session.failure = Failure(cause, _FAILURE_TEXT[cause])
        worker = session.worker
        # Release the slot: exactly once, because OPEN is left exactly once.
        self._unlink(session)
        self._reattachment.settle(session)
        self._caller_deadlines.remove(session.session_id)
        if session.owner and self._owners.get((session.principal, session.owner)) is session:
            del self._owners[(session.principal, session.owner)]
        sid = session.session_id
        reason = "SESSION_FAILED" if state is SessionState.FAILED else "SESSION_COMPLETED"
        self._abort_activities(session, lambda: ActivityAbortedError(sid, reason, cause))
        self._session_deadlines.set(session.session_id, now + self.retention)
        self._events.append(SessionEnded(session, worker.epoch))
        if not worker.connected:
            self._unbind_if_gone(now, worker.key)
        if worker.connected:
            self.registry.touch(worker)
            self._update_interval(now, worker)
            if serve:
                self._serve(now, worker)

    def _forget(self, session: Session) -> None:
        del self._sessions[session.session_id]
        del self._by_seq[session.seq]
        if len(self._seqs) > 2 * len(self._by_seq) + 1024:
            self._seqs = [seq for seq in self._seqs if seq in self._by_seq]
        if session.request_key and self._requests.get(session.request_key) is session:
            del self._requests[session.request_key]

    def _serve(self, now: float, worker: Worker) -> None:
        """Hand what ``worker`` has free to waiters: first the Recreates for it, then its task queue's
        Creates (the policy is :class:`~sessiond.core.placement.Placer`'s).

        A waiter whose deadline has passed is failed, never placed, even when advance() has not
        reached it yet (a slot freed in the same advance, or a call that arrives late).
        """
        for waiter, target in self.placer.next_recreates(now, worker):
            if target is None:
                self._expire_waiter(waiter)
            elif waiter.target_principal != worker.principal:
                # Its token names this id under another principal: not this worker. It and the
                # Recreates behind it wait on (rare: the id changed hands after its binding lapsed).
                break
            else:
                self._place_waiter(now, target, waiter)
        self._serve_creates(now, worker.key.task_queue, worker)
        self._serve_released(now)

    def _serve_creates(self, now: float, task_queue: str, changed: Worker | None) -> None:
        for waiter, target in self.placer.next_creates(now, task_queue, changed):
            if target is None:
                self._expire_waiter(waiter)
            else:
                self._place_waiter(now, target, waiter)

    def _serve_released(self, now: float) -> None:
        """A holding waiter left: the workers it held back may take the other waiting Creates."""
        while self._released:
            self._serve_creates(now, self._released.pop(), None)

    def _update_interval(self, now: float, worker: Worker) -> None:
        # The new interval reaches the worker on the next message it gets (every message carries
        # it), and placement and release always send one: SessionStarted or SessionEnded.
        interval = self.max_heartbeat_interval
        if worker.liveness:
            interval = min(interval, min(worker.liveness) / 3.0)
        if interval != worker.interval:
            # A worker that last spoke long ago under a longer interval was compliant: judge its
            # silence by the new interval only from now, when the message carrying it is sent.
            worker.interval = interval
            worker.interval_since = now
            stale_at = max(worker.last_seen, now) + STALE_INTERVALS * interval
            current = self._worker_deadlines.deadline(worker.key)
            if current is None or stale_at < current:
                self._worker_deadlines.set(worker.key, stale_at)

    # ----------------------------------------------------------------- activities

    def start_activity(self, now: float, session_id: str, timeout: float,
                       heartbeat_timeout: float | None = None, viewer: Viewer = ANYONE) -> Activity:
        """Record an activity in flight in an OPEN session; it times out at ``now + timeout``, or
        earlier when ``heartbeat_timeout`` passes without an :meth:`activity_heartbeat`.

        In a detached session the activity waits for the worker to reattach (its ``worker`` is not
        connected until then), bounded by the same timeout.
        """
        session = self.lookup(now, session_id, viewer)
        if session.principal != viewer.principal:
            # An operator sees and completes every session, but runs work only in its own.
            raise PermissionDeniedError(f"session {session_id} belongs to another principal: only it runs "
                                        "activities there", metadata={"session_id": session_id})
        if session.state is SessionState.FAILED:
            assert session.failure is not None
            raise SessionFailedError(session_id, session.failure.cause)
        if session.state is SessionState.CLOSED:
            raise SessionClosedError(session_id)
        activity = Activity(self._new_activity_id(), session_id, session.worker, session.worker.epoch, now + timeout,
                            heartbeat_timeout=heartbeat_timeout, heartbeat_at=now)
        self._activities[activity.activity_id] = activity
        session.activities.add(activity.activity_id)
        session.activity_count += 1
        # One deadline entry per activity, at the earlier of start_to_close and heartbeat expiry (an
        # activity waiting for a detached session's worker cannot heartbeat: only start_to_close).
        due = activity.due_at() if session.worker.connected else activity.deadline
        self._activity_deadlines.set(activity.activity_id, due)
        return activity

    def activity_heartbeat(self, now: float, key: WorkerKey, epoch: int, activity_id: str,
                           session_id: str) -> Activity | None:
        """The activity heartbeated: its heartbeat deadline moves to ``now + heartbeat_timeout``. O(log n).

        Returns the activity, or None if it is not in flight on that worker (late, unknown, or from
        a fenced connection): the heartbeat is then dropped.
        """
        activity = self._activities.get(activity_id)
        if activity is None or activity.session_id != session_id or activity.epoch != epoch \
                or activity.worker.key != key:
            return None
        activity.heartbeat_at = now
        if activity.heartbeat_timeout is not None:
            self._activity_deadlines.set(activity_id, activity.due_at())
        return activity

    def finish_activity(self, key: WorkerKey, epoch: int, activity_id: str, session_id: str) -> Activity | None:
        """A worker reported an outcome. Returns the activity, or None if it is not in flight on
        that worker (late, unknown, or from a fenced connection): the outcome is then dropped."""
        activity = self._activities.get(activity_id)
        if activity is None or activity.session_id != session_id or activity.epoch != epoch \
                or activity.worker.key != key:
            return None
        return self._pop_activity(activity)

    def abandon_activity(self, activity_id: str) -> Activity | None:
        """The caller stopped waiting (cancelled its RPC). Returns the activity if still in flight."""
        activity = self._activities.get(activity_id)
        return None if activity is None else self._pop_activity(activity)

    def _abort_activities(self, session: Session, error: Callable[[], SessionError]) -> None:
        """End every activity in flight in ``session`` with a fresh ``error()`` each, in id order."""
        for aid in sorted(session.activities):
            activity = self._activities.pop(aid)
            self._activity_deadlines.remove(aid)
            self._events.append(ActivityEnded(activity, error()))
        session.activities.clear()

    def _resume_activities(self, now: float, session: Session) -> None:
        """``session`` was reattached: its activities, which waited for the worker (none was in
        flight: detaching aborted those), are sent to it now, so their heartbeat clock starts now."""
        worker = session.worker
        for aid in session.activities:
            activity = self._activities[aid]
            activity.worker, activity.epoch = worker, worker.epoch
            activity.heartbeat_at = now
            self._activity_deadlines.set(aid, activity.due_at())

    def _pop_activity(self, activity: Activity) -> Activity:
        del self._activities[activity.activity_id]
        self._activity_deadlines.remove(activity.activity_id)
        self._sessions[activity.session_id].activities.discard(activity.activity_id)
        return activity

    # ----------------------------------------------------------------- views

    def recreate_token(self, session: Session) -> bytes:
        """The token that recreates sessions on ``session``'s worker."""
        return self.signer.token(session.worker.key, session.worker.principal)

    def sessions(self, *, task_queue: str = "", owner: str = "", state: SessionState | None = None,
                 after_seq: int = 0, limit: int = 100, max_scan: int = 10_000,
                 where: Callable[[Session], bool] | None = None,
                 principal: str | None = None) -> tuple[list[Session], int | None]:
        """One page of sessions (oldest first) matching the filters, with ``seq > after_seq``.

        ``principal`` keeps only that principal's sessions (None: every principal's, an operator's
        view). ``where`` is an extra filter (operator views: failure cause, worker), applied after the others.

        Finds its start by bisection and looks at no more than ``max_scan`` sessions, so one call
        never blocks the loop for long. Returns the page and the seq to continue after, or None
        when nothing is left (a page may be short or even empty and still have a continuation).
        """
        seqs = self._seqs
        start = bisect.bisect_right(seqs, after_seq)
        page: list[Session] = []
        for index in range(start, min(len(seqs), start + max_scan)):
            session = self._by_seq.get(seqs[index])
            if session is None:
                continue
            if (task_queue and session.task_queue != task_queue) or (owner and session.owner != owner) \
                    or (principal is not None and session.principal != principal) \
                    or (state is not None and session.state is not state) \
                    or (where is not None and not where(session)):
                continue
            page.append(session)
            if len(page) == limit:
                return page, session.seq if index + 1 < len(seqs) else None
        end = start + max_scan
        return page, (seqs[end - 1] if end < len(seqs) else None)

    def workers(self, *, task_queue: str = "", after: WorkerKey | None = None,
                limit: int = 100) -> tuple[list[Worker], WorkerKey | None]:
        """One page of connected workers ordered by (task queue, worker id), after the key ``after``.

        Keyed, not offset, paging: workers joining or leaving between pages shift nothing.
        Returns the page and the key to continue after, or None on the last page. Operator path.
        """
        def order(key: WorkerKey) -> tuple[str, str]:
            return key.task_queue, key.worker_id

        found = sorted(
            (w for w in self.registry.workers.values()
             if (not task_queue or w.key.task_queue == task_queue) and (after is None or order(w.key) > order(after))),
            key=lambda w: order(w.key),
        )
        page = found[:limit]
        return page, (page[-1].key if len(found) > limit else None)

    @property
    def open_count(self) -> int:
        """Open sessions across all workers, detached ones included (O(workers); for tests and views)."""
        connected = sum(len(w.sessions) for w in self.registry.workers.values())
        return connected + self._reattachment.open_count

    def activity(self, activity_id: str) -> Activity | None:
        """The activity, while it is in flight."""
        return self._activities.get(activity_id)

    def waiting_count(self) -> int:
        """Creates and Recreates waiting for a slot."""
        return len(self.waiting)

    def waiting_kinds(self, task_queue: str = "") -> list[WaitingKind]:
        """The waiting Creates grouped by what they ask for, with why no worker could ever hold a kind
        (see :meth:`~sessiond.core.placement.Placer.waiting_kinds`). Operator path."""
        return self.placer.waiting_kinds(task_queue)

    def waiters(self) -> list[Waiter]:
        """The Creates and Recreates waiting for a slot, oldest first (a copy; operator views)."""
        return self.waiting.all()


def _activity_timeout(now: float, activity: Activity) -> ActivityTimeoutError | ActivityHeartbeatTimeoutError:
    """Which of an activity's deadlines passed; start_to_close wins a tie (it is the caller's budget)."""
    metadata = {"session_id": activity.session_id, "activity_id": activity.activity_id}
    if now >= activity.deadline:
        return ActivityTimeoutError(
            f"activity {activity.activity_id} did not finish within its start_to_close_timeout", metadata=metadata)
    return ActivityHeartbeatTimeoutError(
        f"activity {activity.activity_id} sent no heartbeat within its heartbeat_timeout "
        f"({activity.heartbeat_timeout:g} s)", metadata=metadata)


def _wait(options: SessionOptions, max_wait: float | None) -> float:
    return options.creation_timeout if max_wait is None else min(options.creation_timeout, max_wait)

