"""Value types of the session core: states, causes, options, sessions, workers, activities.

Times named ``*_at`` are monotonic seconds (the core's clock); the transport layer turns
them into wall-clock timestamps.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from sessiond.core.resources import ResourceVector
from sessiond.core.selector import EVERYTHING, Selector

# request_id scoped to what was asked, e.g. ("create", task_queue, request_id); () = no request_id.
# A tuple, never a joined string: no choice of names can make two different requests collide.
RequestKey = tuple[str, ...]


def create_request_key(principal: str, task_queue: str, request_id: str) -> RequestKey:
    """The idempotency key of a Create: a principal's request_id on one task queue (``()`` without one)."""
    return (principal, "create", task_queue, request_id) if request_id else ()


def recreate_request_key(principal: str, worker: WorkerKey, request_id: str) -> RequestKey:
    """The idempotency key of a Recreate: a principal's request_id for one worker (``()`` without one)."""
    return (principal, "recreate", worker.task_queue, worker.worker_id, request_id) if request_id else ()


class SessionState(enum.IntEnum):
    """Lifecycle state; values mirror the proto enum."""

    OPEN = 1
    FAILED = 2
    CLOSED = 3


class FailureCause(enum.IntEnum):
    """Why a session failed; values mirror the proto enum."""

    WORKER_LOST = 1
    HEARTBEAT_TIMEOUT = 2
    EXECUTION_TIMEOUT = 3
    WORKER_SHUTDOWN = 4
    CALLER_LOST = 5


# The lifecycle, in one table: the states each state may move to.
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.OPEN: frozenset({SessionState.CLOSED, SessionState.FAILED}),
    SessionState.FAILED: frozenset(),
    SessionState.CLOSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Resolved per-session limits, in seconds (defaults already applied)."""

    creation_timeout: float = 60.0
    execution_timeout: float = 24 * 3600.0
    heartbeat_timeout: float = 20.0
    # 0 = the session never fails for want of a caller.
    caller_timeout: float = 0.0
    # 0 = the session fails WORKER_LOST at once when its worker's stream ends without a goodbye.
    reattach_timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a session failed."""

    cause: FailureCause
    message: str


@dataclass(frozen=True, slots=True)
class WorkerKey:
    """A worker is one stream: a worker id serving one task queue."""

    task_queue: str
    worker_id: str


@dataclass(frozen=True, slots=True)
class WorkerRegistration:
    """What a worker declares when it connects."""

    task_queue: str
    worker_id: str
    identity: str
    host_name: str
    capacity: ResourceVector
    # Unique per worker process: a registration from the same process replaces its own earlier
    # stream at once (that stream is dead from the worker's side), even while it still looks live.
    instance_id: str = ""
    # The authenticated principal registering it ("" when authentication is off): a worker_id is
    # bound to the first principal that registers it.
    principal: str = ""
    # What selectors match (SPEC §6.3): label key -> value.
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What a session is, independent of the table that holds it: the input of adoption.

    A restarted server gets it from a worker's report (the ``Session`` it was given); a replica
    taking over a worker (SPEC §6.5) would get it from the store. Times are the adopter's monotonic
    seconds (the transport layer converts the wall-clock timestamps).
    """

    session_id: str
    task_queue: str
    options: SessionOptions
    owner: str
    request_id: str
    recreated: bool
    placed_at: float
    expire_at: float
    # What the session holds on its worker (``sessions: 1`` included), and the selector it was placed with.
    demand: ResourceVector = field(default_factory=ResourceVector.one_session)
    selector: Selector = EVERYTHING
    # The principal the session belongs to (its creator; "" when authentication is off).
    principal: str = ""


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who asks about sessions: a principal, and whether it sees every principal's (operator).

    Plain data for the core's authorization decisions; how a request became a principal is the
    transport layer's business.
    """

    principal: str = ""
    sees_all: bool = False

    def may_see(self, session: Session) -> bool:
        """True when this viewer may know that ``session`` exists."""
        return self.sees_all or session.principal == self.principal


# Authentication off: everything belongs to the one anonymous principal, who sees it all.
ANYONE = Viewer("", sees_all=True)


@dataclass(slots=True, eq=False)
class Session:
    """One session. Mutated only by :class:`~sessiond.core.table.SessionTable`."""

    session_id: str
    seq: int
    task_queue: str
    worker: Worker
    options: SessionOptions
    owner: str
    request_id: str
    placed_at: float
    expire_at: float
    state: SessionState = SessionState.OPEN
    closed_at: float | None = None
    failure: Failure | None = None
    # What the session holds on its worker, ``sessions: 1`` included (released when it ends).
    demand: ResourceVector = field(default_factory=ResourceVector.one_session)
    # The label selector it was placed with (recorded for views and adoption; the empty one for Recreates).
    selector: Selector = EVERYTHING
    activities: set[str] = field(default_factory=set)
    # request_id scoped to the request it came with (the key of the idempotency index).
    request_key: RequestKey = ()
    # Placed by RecreateSession (its request_id is scoped to the worker, not the queue).
    recreated: bool = False
    # When the session joined its worker's liveness group: placement, re-attachment or adoption.
    # Non-decreasing in group order, which lets a group keep one deadline.
    live_from: float = 0.0
    # Set while the worker's stream is gone and the session waits for it (reattach_timeout).
    detached_at: float | None = None
    # Caller liveness: the last RPC on the session, and how many WatchSessions are open on it.
    caller_seen: float = 0.0
    watchers: int = 0
    # Activities started in this session so far (operator views: a session that ran none for hours is stuck).
    activity_count: int = 0
    # The principal that created it: only it (and an operator) may see it; owner keys and request
    # ids are scoped by it.
    principal: str = ""


@dataclass(slots=True, eq=False)
class Worker:
    """One connected (or last-connected) worker stream."""

    key: WorkerKey
    epoch: int
    identity: str
    host_name: str
    capacity: ResourceVector
    connected_at: float
    last_seen: float
    instance_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    used: ResourceVector = field(default_factory=ResourceVector)
    sessions: set[str] = field(default_factory=set)
    connected: bool = True
    draining: bool = False
    suspect: bool = False
    # The principal that registered this stream (the worker_id is bound to it).
    principal: str = ""
    # Its stream is not taking what is queued for it (over the backlog bound): no new sessions.
    backlogged: bool = False
    # Bumped whenever free capacity or eligibility changes; stale placement entries carry old versions.
    version: int = 0
    # Liveness groups: heartbeat_timeout -> its open sessions, oldest placement first. A silent
    # worker fails a group's sessions in that order, so one deadline per group suffices; the
    # smallest timeout sets the heartbeat interval.
    liveness: dict[float, dict[str, Session]] = field(default_factory=dict)
    interval: float = 10.0
    # When ``interval`` took effect: the worker's silence is judged by it only from then on.
    interval_since: float = 0.0
    _free: ResourceVector = field(default_factory=ResourceVector, repr=False)
    _free_of: ResourceVector | None = field(default=None, repr=False)

    @property
    def eligible(self) -> bool:
        """True when placement may put a new session here."""
        return self.connected and not self.draining and not self.suspect and not self.backlogged

    @property
    def free(self) -> ResourceVector:
        """Capacity not yet used by open sessions (computed once per change of ``used``: vectors are
        immutable, so a new ``used`` object is the only way it changes)."""
        used = self.used
        if self._free_of is not used:
            self._free = self.capacity - used
            self._free_of = used
        return self._free


@dataclass(slots=True, eq=False)
class Activity:
    """One activity execution in flight."""

    activity_id: str
    session_id: str
    worker: Worker
    epoch: int
    deadline: float
    # Silence allowed between the activity's heartbeats (None: no heartbeat timeout), and the
    # last time it heartbeated (its start counts as the first).
    heartbeat_timeout: float | None = None
    heartbeat_at: float = 0.0

    def due_at(self) -> float:
        """When the activity times out if nothing more is heard: the earlier of its two deadlines."""
        if self.heartbeat_timeout is None:
            return self.deadline
        return min(self.deadline, self.heartbeat_at + self.heartbeat_timeout)


@dataclass(slots=True, eq=False)
class Waiter:
    """A Create or Recreate waiting for capacity."""

    waiter_id: str
    task_queue: str
    target: WorkerKey | None  # set for Recreate: only this worker will do
    options: SessionOptions
    owner: str
    request_id: str
    deadline: float
    done: bool = False
    request_key: RequestKey = ()
    # When it started waiting (operator views show the age of the oldest waiter per queue).
    since: float = 0.0
    # The principal the session will belong to.
    principal: str = ""
    # For Recreate: the principal the target worker must be registered by (the token says).
    target_principal: str = ""
    # What it asks for (``sessions: 1`` included) and on which workers (Creates only).
    demand: ResourceVector = field(default_factory=ResourceVector.one_session)
    selector: Selector = EVERYTHING
    # Arrival order across the task queue (the fairness policy compares waiters by it).
    seq: int = 0
    # How often a later request took what this one needs while it was the oldest of its kind, and
    # whether that reached the limit: then it holds the workers it could use (see core.placement).
    skipped: int = 0
    holding: bool = False


@dataclass(frozen=True, slots=True)
class WaitingKind:
    """The Creates of one task queue that wait for the same thing (operator views)."""

    task_queue: str
    demand: ResourceVector
    selector: Selector
    count: int
    # When the oldest of them started waiting.
    oldest_since: float
    # Why no connected worker could ever hold such a request (None: one could, once enough is free).
    unplaceable: str | None
