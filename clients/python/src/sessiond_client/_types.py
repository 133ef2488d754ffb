"""Typed, immutable views of the sessiond.v1 messages a caller or worker reads.

Each dataclass mirrors one proto message and is built by a private ``_from_proto``; the enums
mirror the proto enums value for value, so ``int(SessionState.OPEN)`` is the wire value.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal

from sessiond_client._time import duration_from_proto, duration_to_proto, timestamp_from_proto
from sessiond_client.api.v1 import session_pb2


class SessionState(enum.IntEnum):
    """Lifecycle state of a session: OPEN, then exactly one of FAILED or CLOSED."""

    OPEN = int(session_pb2.SESSION_STATE_OPEN)
    """The session holds a slot on a live worker and accepts activities."""
    FAILED = int(session_pb2.SESSION_STATE_FAILED)
    """The worker was lost, went silent or shut down, or the session timed out."""
    CLOSED = int(session_pb2.SESSION_STATE_CLOSED)
    """The session was completed by its caller."""

    @property
    def is_terminal(self) -> bool:
        """True for FAILED and CLOSED: the session takes no more activities."""
        return self is not SessionState.OPEN


class FailureCause(enum.IntEnum):
    """Why a session FAILED.

    ``UNSPECIFIED`` is never a server verdict: the client uses it when a newer server sends a cause
    this library does not know yet. ``SERVER_UNREACHABLE`` and ``SESSION_LOST`` are never sent by
    the server either: the library reports them when it cannot get a verdict (see each).
    """

    UNSPECIFIED = int(session_pb2.FAILURE_CAUSE_UNSPECIFIED)
    """The cause is unknown to this client."""
    WORKER_LOST = int(session_pb2.FAILURE_CAUSE_WORKER_LOST)
    """The worker's stream ended without a goodbye."""
    HEARTBEAT_TIMEOUT = int(session_pb2.FAILURE_CAUSE_HEARTBEAT_TIMEOUT)
    """The worker was silent for longer than the session's ``heartbeat_timeout``."""
    EXECUTION_TIMEOUT = int(session_pb2.FAILURE_CAUSE_EXECUTION_TIMEOUT)
    """The session reached its ``execution_timeout``."""
    WORKER_SHUTDOWN = int(session_pb2.FAILURE_CAUSE_WORKER_SHUTDOWN)
    """The worker shut down without draining while the session was open."""
    CALLER_LOST = int(session_pb2.FAILURE_CAUSE_CALLER_LOST)
    """Nobody attended the session (no watch, no RPC) for its ``caller_timeout``."""
    SERVER_UNREACHABLE = int(session_pb2.FAILURE_CAUSE_SERVER_UNREACHABLE)
    """Client-side: no server answered for the session for longer than the recovery window (the
    server is gone, not restarting); its worker has dropped the session by then."""
    SESSION_LOST = int(session_pb2.FAILURE_CAUSE_SESSION_LOST)
    """Client-side: the server no longer knows the session: it restarted and the session's worker did
    not report it within the recovery window (or its retention passed while nobody watched)."""

    @classmethod
    def _from_wire(cls, value: int) -> FailureCause:
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED

    @classmethod
    def _from_name(cls, name: str | None) -> FailureCause:
        """Parse the ``cause`` ErrorInfo metadata: the enum name without prefix, e.g. ``WORKER_LOST``."""
        if not name:
            return cls.UNSPECIFIED
        key = name.upper().removeprefix("FAILURE_CAUSE_")
        return cls.__members__.get(key, cls.UNSPECIFIED)


def _state_from_wire(value: int) -> SessionState:
    # The server never sends UNSPECIFIED; an unknown value is treated as the conservative terminal
    # state so a caller stops sending work rather than crashing on a newer server.
    try:
        return SessionState(value)
    except ValueError:
        return SessionState.FAILED


@dataclass(frozen=True, slots=True)
class WorkerRef:
    """The worker a session runs on."""

    worker_id: str
    """Stable if the worker supplied one, else a UUID per worker process."""
    identity: str
    """Free-form identity the worker declared, for example ``pid@host``."""
    host_name: str
    """Host name the worker declared."""

    @classmethod
    def _from_proto(cls, msg: session_pb2.WorkerRef) -> WorkerRef:
        return cls(worker_id=msg.worker_id, identity=msg.identity, host_name=msg.host_name)


@dataclass(frozen=True, slots=True)
class SessionFailure:
    """Why a session failed."""

    cause: FailureCause
    """The machine-readable cause."""
    message: str
    """A human-readable explanation."""

    @classmethod
    def _from_proto(cls, msg: session_pb2.Failure) -> SessionFailure:
        return cls(cause=FailureCause._from_wire(msg.cause), message=msg.message)


def _amounts(values: Mapping[str, int]) -> Mapping[str, int]:
    """A read-only copy of a resource map (``{"gpu": 1}``), names sorted."""
    return MappingProxyType({k: int(values[k]) for k in sorted(values)})


def _labels(values: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy of a label map, keys sorted."""
    return MappingProxyType({k: values[k] for k in sorted(values)})


_EMPTY_AMOUNTS: Mapping[str, int] = MappingProxyType({})
_EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})
_ONE_SESSION: Mapping[str, int] = MappingProxyType({"sessions": 1})


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Per-session limits and placement constraints. ``None`` means "the server default" when
    creating a session."""

    creation_timeout: timedelta | None = None
    """How long Create/Recreate may wait for capacity (server default 60 s; 0 = do not wait)."""
    execution_timeout: timedelta | None = None
    """The session's maximum life (server default 24 h)."""
    heartbeat_timeout: timedelta | None = None
    """Worker silence after which the session fails (server default 20 s)."""
    caller_timeout: timedelta | None = None
    """Unattended this long (no watch, no RPC), the session fails ``CALLER_LOST`` (0 = never)."""
    reattach_timeout: timedelta | None = None
    """How long the session survives its worker's stream ending, detached, waiting for the worker
    to register again (0 = not at all: ``WORKER_LOST`` at once)."""
    resources: Mapping[str, int] = field(default_factory=lambda: _EMPTY_AMOUNTS)
    """What the session asks for besides its session slot, e.g. ``{"gpu": 1}``: it goes only to a
    worker with every amount free, and holds them until it ends."""
    selector: str = ""
    """Which workers may take it, by their labels, e.g. ``"zone=a, gpu_model in (h100,a100), ssd"``
    (empty: any). The server echoes it in canonical form."""

    @classmethod
    def _from_proto(cls, msg: session_pb2.SessionOptions) -> SessionOptions:
        def get(
            name: Literal["creation_timeout", "execution_timeout", "heartbeat_timeout", "caller_timeout",
                          "reattach_timeout"],
        ) -> timedelta | None:
            return duration_from_proto(getattr(msg, name)) if msg.HasField(name) else None

        return cls(
            creation_timeout=get("creation_timeout"),
            execution_timeout=get("execution_timeout"),
            heartbeat_timeout=get("heartbeat_timeout"),
            caller_timeout=get("caller_timeout"),
            reattach_timeout=get("reattach_timeout"),
            resources=_amounts(msg.resources) if msg.resources else _EMPTY_AMOUNTS,
            selector=msg.selector,
        )

    def _to_proto(self) -> session_pb2.SessionOptions:
        out = session_pb2.SessionOptions(resources=dict(self.resources), selector=self.selector)
        if self.creation_timeout is not None:
            out.creation_timeout.CopyFrom(duration_to_proto(self.creation_timeout))
        if self.execution_timeout is not None:
            out.execution_timeout.CopyFrom(duration_to_proto(self.execution_timeout))
        if self.heartbeat_timeout is not None:
            out.heartbeat_timeout.CopyFrom(duration_to_proto(self.heartbeat_timeout))
        if self.caller_timeout is not None:
            out.caller_timeout.CopyFrom(duration_to_proto(self.caller_timeout))
        if self.reattach_timeout is not None:
            out.reattach_timeout.CopyFrom(duration_to_proto(self.reattach_timeout))
        return out


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as the server last reported it. Immutable: a newer report is a new object."""

    session_id: str
    """Unguessable UUID4 of the session."""
    task_queue: str
    """Task queue the session was placed on."""
    state: SessionState
    """Lifecycle state."""
    worker: WorkerRef
    """The worker that holds (or held) the session."""
    recreate_token: bytes
    """Opaque token for :meth:`SessionClient.recreate_session` (a new session on the same worker)."""
    create_time: datetime | None
    """When the session was placed (aware, UTC)."""
    expire_time: datetime | None
    """When the session fails with EXECUTION_TIMEOUT if still open (aware, UTC)."""
    close_time: datetime | None
    """When the session became FAILED or CLOSED; ``None`` while OPEN."""
    owner: str | None
    """The caller-chosen owner key, if any."""
    failure: SessionFailure | None
    """Why the session failed; set only when ``state`` is FAILED."""
    options: SessionOptions
    """The options the session runs with, server defaults filled in."""
    detached_since: datetime | None = None
    """Set while the session is detached: its worker's stream ended and the session (still OPEN,
    slot kept) waits up to ``reattach_timeout`` for the worker to register again."""
    request_id: str | None = None
    """The idempotency key the session was placed with, if any."""
    principal: str | None = None
    """The principal that created the session (None when the server has no authentication): only
    it and operators see the session."""
    resources: Mapping[str, int] = field(default_factory=lambda: _ONE_SESSION)
    """What the session holds on its worker: ``{"sessions": 1}`` and every amount it asked for
    (``{"gpu": 1, "sessions": 1}``), released when it ends."""

    @property
    def detached(self) -> bool:
        """True while the session waits for its worker to come back."""
        return self.detached_since is not None

    @property
    def host_name(self) -> str:
        """Host name of the session's worker (the original SessionInfo.HostName)."""
        return self.worker.host_name

    @classmethod
    def _from_proto(cls, msg: session_pb2.Session) -> SessionInfo:
        state = _state_from_wire(msg.state)
        failure: SessionFailure | None = None
        if msg.HasField("failure"):
            failure = SessionFailure._from_proto(msg.failure)
        elif state is SessionState.FAILED:
            failure = SessionFailure(cause=FailureCause.UNSPECIFIED, message="")
        return cls(
            session_id=msg.session_id,
            task_queue=msg.task_queue,
            state=state,
            worker=WorkerRef._from_proto(msg.worker),
            recreate_token=bytes(msg.recreate_token),
            create_time=timestamp_from_proto(msg.create_time) if msg.HasField("create_time") else None,
            expire_time=timestamp_from_proto(msg.expire_time) if msg.HasField("expire_time") else None,
            close_time=timestamp_from_proto(msg.close_time) if msg.HasField("close_time") else None,
            owner=msg.owner or None,
            failure=failure,
            options=SessionOptions._from_proto(msg.options),
            detached_since=timestamp_from_proto(msg.detached_since) if msg.HasField("detached_since") else None,
            request_id=msg.request_id or None,
            principal=msg.principal or None,
            resources=_amounts(msg.resources) if msg.resources else _ONE_SESSION,
        )


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """The operator's view of one connected worker."""

    worker_id: str
    """The worker's id."""
    task_queue: str
    """Task queue the worker serves."""
    identity: str
    """Identity the worker declared."""
    host_name: str
    """Host name the worker declared."""
    max_concurrent_sessions: int
    """The worker's session limit."""
    open_sessions: int
    """Sessions currently OPEN on the worker."""
    draining: bool
    """True once the worker said goodbye with drain: it takes no new sessions."""
    connect_time: datetime | None
    """When the worker registered (aware, UTC)."""
    last_heartbeat_time: datetime | None
    """When the server last heard from the worker (aware, UTC)."""
    principal: str | None = None
    """The principal that registered the worker (None when the server has no authentication)."""
    capacities: Mapping[str, int] = field(default_factory=lambda: _EMPTY_AMOUNTS)
    """What the worker can hold, by resource (``sessions`` = ``max_concurrent_sessions``)."""
    used: Mapping[str, int] = field(default_factory=lambda: _EMPTY_AMOUNTS)
    """What its open sessions hold now, by resource."""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY_LABELS)
    """The worker's labels, which session selectors match."""

    @property
    def free(self) -> Mapping[str, int]:
        """Capacity not used, by resource."""
        return MappingProxyType({k: v - self.used.get(k, 0) for k, v in self.capacities.items()})

    @classmethod
    def _from_proto(cls, msg: session_pb2.WorkerInfo) -> WorkerInfo:
        return cls(
            worker_id=msg.worker_id,
            task_queue=msg.task_queue,
            identity=msg.identity,
            host_name=msg.host_name,
            max_concurrent_sessions=msg.max_concurrent_sessions,
            open_sessions=msg.open_sessions,
            draining=msg.draining,
            connect_time=timestamp_from_proto(msg.connect_time) if msg.HasField("connect_time") else None,
            last_heartbeat_time=(
                timestamp_from_proto(msg.last_heartbeat_time) if msg.HasField("last_heartbeat_time") else None
            ),
            principal=msg.principal or None,
            capacities=_amounts(msg.capacities),
            used=_amounts(msg.used),
            labels=_labels(msg.labels),
        )


@dataclass(frozen=True, slots=True)
class WaitingRequests:
    """The waiting creates of one task queue that ask for the same thing (from ``ListWorkers``)."""

    task_queue: str
    """The task queue they wait on."""
    resources: Mapping[str, int]
    """What each asks for (``sessions`` included)."""
    selector: str
    """Their selector, in canonical form ("" = any worker)."""
    count: int
    """How many wait."""
    oldest_since: datetime | None
    """When the oldest of them started waiting (aware, UTC)."""
    unplaceable_reason: str | None
    """Why no connected worker could ever hold such a request (no label match, too little
    capacity), or ``None`` when one could once enough is free. They wait either way: a worker that
    can hold them may join."""

    @classmethod
    def _from_proto(cls, msg: session_pb2.WaitingRequests) -> WaitingRequests:
        return cls(
            task_queue=msg.task_queue,
            resources=_amounts(msg.resources),
            selector=msg.selector,
            count=msg.count,
            oldest_since=timestamp_from_proto(msg.oldest_since) if msg.HasField("oldest_since") else None,
            unplaceable_reason=msg.unplaceable_reason or None,
        )
