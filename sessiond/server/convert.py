"""Conversions between core values and sessiond.v1 messages, and between the two clocks.

The core counts monotonic seconds; the wire carries wall-clock Timestamps. A
:class:`WallClock` fixes the offset between them once, at start-up.
"""

from __future__ import annotations

import functools
import time
from datetime import timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from sessiond_client.api.v1 import session_pb2

from sessiond.core.model import Session, SessionOptions, WaitingKind, Worker
from sessiond.core.resources import SESSIONS, ResourceVector
from sessiond.core.token import Signer


class WallClock:
    """Maps monotonic seconds (the core's time) to wall-clock Timestamps."""

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()

    def timestamp(self, monotonic: float) -> timestamp_pb2.Timestamp:
        """The wall-clock Timestamp of a monotonic instant."""
        out = timestamp_pb2.Timestamp()
        self.fill(out, monotonic)
        return out

    def monotonic(self, stamp: timestamp_pb2.Timestamp) -> float:
        """The monotonic instant of a wall-clock Timestamp (a record another process wrote)."""
        return stamp.seconds + stamp.nanos / 1e9 - self._offset

    def fill(self, out: timestamp_pb2.Timestamp, monotonic: float) -> None:
        """Set ``out`` (a Timestamp field of a message being built) to the wall-clock time of ``monotonic``."""
        wall = monotonic + self._offset
        seconds = int(wall)
        out.seconds = seconds
        out.nanos = int((wall - seconds) * 1e9)


@functools.lru_cache(maxsize=4096)
def _duration_parts(seconds: float) -> tuple[int, int]:
    # The same (seconds, nanos) as Duration.FromTimedelta(timedelta(seconds=...)), which rounds to microseconds;
    # cached because a server uses a handful of distinct durations (defaults, intervals, timeouts).
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out.seconds, out.nanos


def duration(seconds: float) -> duration_pb2.Duration:
    """A Duration message of ``seconds``."""
    whole, nanos = _duration_parts(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=nanos)


def options_to_pb(options: SessionOptions) -> session_pb2.SessionOptions:
    """Resolved options as a message (every field set)."""
    out = session_pb2.SessionOptions()
    out.CopyFrom(_options_template(options))
    return out


@functools.lru_cache(maxsize=1024)
def _options_template(options: SessionOptions) -> session_pb2.SessionOptions:
    # Shared and never mutated: only ever copied into a message being built (constructor arguments copy).
    return session_pb2.SessionOptions(
        creation_timeout=duration(options.creation_timeout),
        execution_timeout=duration(options.execution_timeout),
        heartbeat_timeout=duration(options.heartbeat_timeout),
        caller_timeout=duration(options.caller_timeout),
        reattach_timeout=duration(options.reattach_timeout),
    )


@functools.lru_cache(maxsize=65536)
def _worker_ref(worker_id: str, identity: str, host_name: str) -> session_pb2.WorkerRef:
    # Shared and never mutated, as _options_template.
    return session_pb2.WorkerRef(worker_id=worker_id, identity=identity, host_name=host_name)


@functools.lru_cache(maxsize=1024)
def resource_map(vector: ResourceVector) -> dict[str, int]:
    """A resource vector as a proto map's value (cached: sessions share a few vectors; never mutated)."""
    return vector.as_dict()


def session_to_pb(session: Session, clock: WallClock, signer: Signer) -> session_pb2.Session:
    """A session as the wire shows it (``signer`` makes its recreate token): ``resources`` is what it
    holds (``sessions: 1`` included); ``options.resources`` and ``options.selector`` are what it asked for."""
    worker = session.worker
    out = session_pb2.Session(
        session_id=session.session_id,
        task_queue=session.task_queue,
        state=int(session.state),  # type: ignore[arg-type]  # IntEnum values mirror the proto enum
        worker=_worker_ref(worker.key.worker_id, worker.identity, worker.host_name),
        recreate_token=signer.token(worker.key, worker.principal),
        owner=session.owner,
        options=_options_template(session.options),
        request_id=session.request_id,
        recreated=session.recreated,
        principal=session.principal,
        resources=resource_map(session.demand),
    )
    if len(session.demand) > 1:
        out.options.resources.update((k, v) for k, v in session.demand.items() if k != SESSIONS)
    if session.selector:
        out.options.selector = str(session.selector)
    clock.fill(out.create_time, session.placed_at)
    if session.detached_at is not None:
        clock.fill(out.detached_since, session.detached_at)
    clock.fill(out.expire_time, session.expire_at)
    if session.closed_at is not None:
        clock.fill(out.close_time, session.closed_at)
    if session.failure is not None:
        out.failure.cause = int(session.failure.cause)  # type: ignore[assignment]
        out.failure.message = session.failure.message
    return out


def worker_to_pb(worker: Worker, clock: WallClock) -> session_pb2.WorkerInfo:
    """A connected worker as the operator sees it."""
    return session_pb2.WorkerInfo(
        worker_id=worker.key.worker_id,
        task_queue=worker.key.task_queue,
        identity=worker.identity,
        host_name=worker.host_name,
        max_concurrent_sessions=worker.capacity[SESSIONS],
        open_sessions=len(worker.sessions),
        draining=worker.draining,
        connect_time=clock.timestamp(worker.connected_at),
        last_heartbeat_time=clock.timestamp(worker.last_seen),
        capacities=resource_map(worker.capacity),
        used=worker.used.as_dict(),
        labels=worker.labels,
        principal=worker.principal,
    )


def waiting_to_pb(kind: WaitingKind, clock: WallClock) -> session_pb2.WaitingRequests:
    """Waiting Creates of one kind, as ListWorkers shows them."""
    return session_pb2.WaitingRequests(
        task_queue=kind.task_queue, resources=resource_map(kind.demand), selector=str(kind.selector),
        count=kind.count, oldest_since=clock.timestamp(kind.oldest_since),
        unplaceable_reason=kind.unplaceable or "",
    )


def record_parts(session: session_pb2.Session, worker_principal: str) -> tuple[str | int | bytes, ...]:
    """The fields of a session record that its signature covers, as they are on the wire.

    Everything a restarted server adopts from a worker's report: ids, the principal and owner keys,
    the options (deterministically serialized: new option fields are covered without a line here),
    what it holds on its worker, and times; plus the principal of the worker that holds it (not in
    the message: the report must come from a worker registered by that principal).
    """
    held = sorted(session.resources.items())
    return (
        session.session_id, session.task_queue, session.worker.worker_id, worker_principal, session.principal,
        session.owner, session.request_id, int(session.recreated),
        session.options.SerializeToString(deterministic=True),
        session.create_time.seconds, session.create_time.nanos, session.expire_time.seconds, session.expire_time.nanos,
        len(held), *(part for amount in held for part in amount),
    )
