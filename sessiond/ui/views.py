"""The dashboard's JSON shapes: sessions, workers, task queues and failures as plain dicts.

No HTTP here: functions take core objects (or the engine) and return what the endpoints send,
so the shapes are tested without a server. Times are RFC 3339 strings (wall clock, for people
and log searches) next to ages in seconds (from the engine's monotonic clock, for sorting and
"stuck since" questions). Amounts are maps of resource name to integer (``sessions`` and what
workers declare, e.g. ``gpu``).

Nothing here scans every session: a session page looks at a bounded number of sessions
(:data:`MAX_SCAN`), and the overview walks workers and waiters (not sessions) in chunks,
yielding to the event loop between them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sessiond.core.model import FailureCause, Session, SessionState, Waiter, Worker
from sessiond.core.resources import ResourceVector
from sessiond.core.selector import Selector
from sessiond.server.convert import WallClock
from sessiond.server.engine import Engine
from sessiond.telemetry.failures import FailureRecord

JSON = dict[str, Any]

# Sessions one page request may look at (the core finds the start by bisection, then scans).
MAX_SCAN = 5_000
# Session ids listed per worker (the count is always exact).
HELD_SESSIONS_SHOWN = 10
# Overview: workers and waiters handled between two yields to the event loop.
CHUNK = 1_000
# Overview: task queues listed (sorted by name; ``queues_total`` says how many there are).
MAX_QUEUES = 500
# Overview: latest failures listed.
RECENT_FAILURES = 20
# Overview: kinds of waiting creates listed per queue (``waiting_unplaceable`` counts them all).
WAITING_KINDS_SHOWN = 20


@functools.lru_cache(maxsize=8)
def _offset(clock: WallClock) -> float:
    """Wall-clock seconds at monotonic 0 for ``clock`` (fixed when the clock was made)."""
    zero = clock.timestamp(0.0)
    return zero.seconds + zero.nanos / 1e9


@functools.lru_cache(maxsize=4096)
def _whole_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def wall(clock: WallClock, monotonic: float) -> str:
    """A monotonic instant as an RFC 3339 UTC string with milliseconds (``2026-01-02T03:04:05.678Z``).

    Formatted here rather than through ``Timestamp.ToJsonString`` (about 10 µs each, and a page of
    sessions has a few hundred of them).
    """
    instant = monotonic + _offset(clock)
    whole = math.floor(instant)
    return f"{_whole_second(whole)}.{min(999, int((instant - whole) * 1000)):03d}Z"


def amounts(vector: ResourceVector) -> dict[str, int]:
    """A resource vector as a JSON map (zero amounts omitted)."""
    return vector.as_dict()


def _add(total: dict[str, int], vector: ResourceVector) -> None:
    for name, amount in vector.as_dict().items():
        total[name] = total.get(name, 0) + amount


def session_json(session: Session, now: float, clock: WallClock) -> JSON:
    """One session as the dashboard shows it (no recreate token: it is a capability, not a label)."""
    worker = session.worker
    failure = session.failure
    # Issue 9 adds ``detached_since`` (a worker restart in progress); shown as soon as the core has it.
    detached = getattr(session, "detached_since", None)
    return {
        "session_id": session.session_id,
        "task_queue": session.task_queue,
        "state": session.state.name,
        "owner": session.owner,
        "worker": {"worker_id": worker.key.worker_id, "identity": worker.identity, "host_name": worker.host_name},
        "create_time": wall(clock, session.placed_at),
        "expire_time": wall(clock, session.expire_at),
        "close_time": None if session.closed_at is None else wall(clock, session.closed_at),
        "age_s": round(now - session.placed_at, 3),
        "detached_since": None if detached is None else wall(clock, detached),
        "activity_count": session.activity_count,
        "activities_in_flight": len(session.activities),
        "resources": amounts(session.demand),
        "failure": None if failure is None else {"cause": failure.cause.name, "message": failure.message},
        "options": {
            "creation_timeout_s": session.options.creation_timeout,
            "execution_timeout_s": session.options.execution_timeout,
            "heartbeat_timeout_s": session.options.heartbeat_timeout,
            "selector": str(session.selector),
        },
    }


def worker_state(worker: Worker) -> str:
    """``ready``, ``full``, ``draining``, ``silent`` (no heartbeat for 3 intervals: takes no new
    sessions until it speaks) or ``detached`` (issue 9: gone, its sessions held for a reattach)."""
    if getattr(worker, "detached", False):
        return "detached"
    if worker.draining:
        return "draining"
    if worker.suspect:
        return "silent"
    return "ready" if worker.eligible and worker.free.covers(ResourceVector.one_session()) else "full"


def worker_json(worker: Worker, now: float, clock: WallClock) -> JSON:
    """One connected worker, with its capacity per resource and (up to 10 of) the sessions it holds."""
    return {
        "worker_id": worker.key.worker_id,
        "task_queue": worker.key.task_queue,
        "identity": worker.identity,
        "host_name": worker.host_name,
        "labels": dict(worker.labels),
        "state": worker_state(worker),
        "draining": worker.draining,
        "capacity": amounts(worker.capacity),
        "used": amounts(worker.used),
        "connect_time": wall(clock, worker.connected_at),
        "last_heartbeat_time": wall(clock, worker.last_seen),
        "last_heartbeat_age_s": round(max(0.0, now - worker.last_seen), 3),
        "heartbeat_interval_s": worker.interval,
        "open_sessions": len(worker.sessions),
        "sessions": sorted(itertools.islice(worker.sessions, HELD_SESSIONS_SHOWN)),
    }


def failure_json(failure: FailureRecord, now: float, clock: WallClock) -> JSON:
    """One failure of the recent-failures ring."""
    return {
        "time": wall(clock, failure.at),
        "age_s": round(now - failure.at, 3),
        "session_id": failure.session_id,
        "task_queue": failure.task_queue,
        "worker_id": failure.worker_id,
        "owner": failure.owner,
        "cause": failure.cause,
        "message": failure.message,
    }


def failures_json(engine: Engine, now: float, limit: int) -> JSON:
    """The failure timeline (counts by cause per bucket, oldest first), totals, and the latest failures."""
    log = engine.failures
    return {
        "bucket_s": log.bucket_seconds,
        "causes": [cause.name for cause in FailureCause],
        "timeline": [{"start": wall(engine.clock, b.start), "counts": b.counts} for b in log.timeline(now)],
        "totals": dict(log.totals),
        "recent": [failure_json(f, now, engine.clock) for f in log.recent(limit)],
    }


# --------------------------------------------------------------------- session pages


@dataclass(frozen=True)
class SessionFilter:
    """What a session page asks for; empty strings and None mean "any"."""

    task_queue: str = ""
    owner: str = ""
    state: SessionState | None = None
    cause: FailureCause | None = None
    worker_id: str = ""

    def where(self) -> Callable[[Session], bool] | None:
        """The filters the core's paging has no argument for, as one predicate (or None)."""
        cause, worker_id = self.cause, self.worker_id
        if cause is None and not worker_id:
            return None

        def match(session: Session) -> bool:
            if cause is not None and (session.failure is None or session.failure.cause is not cause):
                return False
            return not worker_id or session.worker.key.worker_id == worker_id

        return match


def session_page(engine: Engine, wanted: SessionFilter, after_seq: int, limit: int) -> JSON:
    """One page of sessions, oldest first. ``next_page_token`` is "" on the last page.

    A page looks at no more than :data:`MAX_SCAN` sessions, so with a narrow filter it may hold
    fewer than ``limit`` (even none) and still have a next page.
    """
    page, more = engine.table.sessions(
        task_queue=wanted.task_queue, owner=wanted.owner, state=wanted.state, after_seq=after_seq, limit=limit,
        max_scan=MAX_SCAN, where=wanted.where())
    now = engine.now()
    return {
        "sessions": [session_json(s, now, engine.clock) for s in page],
        "next_page_token": "" if more is None else str(more),
    }


# --------------------------------------------------------------------- overview


@dataclass
class _Queue:
    workers: int = 0
    ready_workers: int = 0
    draining_workers: int = 0
    silent_workers: int = 0
    open_sessions: int = 0
    waiting: int = 0
    waiting_recreates: int = 0
    oldest_wait_since: float | None = None

    def __post_init__(self) -> None:
        self.capacity: dict[str, int] = {}
        self.used: dict[str, int] = {}
        self.available: dict[str, int] = {}
        # Waiting creates by what they ask for: [count, oldest since].
        self.kinds: dict[tuple[ResourceVector, Selector], list[float]] = {}

    def add_worker(self, worker: Worker) -> None:
        self.workers += 1
        self.open_sessions += len(worker.sessions)
        _add(self.capacity, worker.capacity)
        _add(self.used, worker.used)
        if worker.eligible:
            self.ready_workers += 1
            # Only an eligible worker's free capacity can take a session.
            _add(self.available, worker.free)
        if worker.draining:
            self.draining_workers += 1
        elif worker.suspect:
            self.silent_workers += 1

    def add_waiter(self, waiter: Waiter) -> None:
        self.waiting += 1
        if waiter.target is not None:
            self.waiting_recreates += 1
        else:
            kind = self.kinds.setdefault((waiter.demand, waiter.selector), [0, waiter.since])
            kind[0] += 1
            kind[1] = min(kind[1], waiter.since)
        if self.oldest_wait_since is None or waiter.since < self.oldest_wait_since:
            self.oldest_wait_since = waiter.since

    def json(self, name: str, now: float, why: Callable[[str, ResourceVector, Selector], str | None]) -> JSON:
        kinds = []
        unplaceable = 0
        for (demand, selector), (count, since) in sorted(self.kinds.items(), key=lambda item: item[1][1]):
            reason = why(name, demand, selector)
            unplaceable += int(count) if reason is not None else 0
            kinds.append({"resources": amounts(demand), "selector": str(selector), "count": int(count),
                          "oldest_wait_age_s": round(now - since, 3), "unplaceable_reason": reason})
        return {
            "task_queue": name,
            "workers": self.workers,
            "ready_workers": self.ready_workers,
            "draining_workers": self.draining_workers,
            "silent_workers": self.silent_workers,
            "open_sessions": self.open_sessions,
            "capacity": self.capacity,
            "used": self.used,
            "available": self.available,
            "waiting": self.waiting,
            "waiting_recreates": self.waiting_recreates,
            "oldest_wait_s": None if self.oldest_wait_since is None else round(now - self.oldest_wait_since, 3),
            # Waiting creates no connected worker could ever hold (labels, capacity), and the kinds
            # of waiting creates, oldest first, each with why it cannot be placed when it cannot.
            "waiting_unplaceable": unplaceable,
            "waiting_requests": kinds[:WAITING_KINDS_SHOWN],
        }


async def overview(engine: Engine, server: JSON) -> JSON:
    """Totals, task queues (workers, capacity per resource, waiting creates and the oldest wait's
    age) and failures. Walks workers and waiters in chunks of :data:`CHUNK`, yielding between
    chunks, so a large registry never holds the event loop; the result may straddle a few
    milliseconds of changes, which a dashboard refreshed every second can afford."""
    workers = list(engine.table.registry.workers.values())
    waiters = engine.table.waiters()
    queues: dict[str, _Queue] = {}
    for start in range(0, len(workers), CHUNK):
        if start:
            await asyncio.sleep(0)
        for worker in workers[start:start + CHUNK]:
            queue = queues.get(worker.key.task_queue)
            if queue is None:
                queue = queues[worker.key.task_queue] = _Queue()
            queue.add_worker(worker)
    for start in range(0, len(waiters), CHUNK):
        await asyncio.sleep(0)
        for waiter in waiters[start:start + CHUNK]:
            if waiter.done:
                continue
            queue = queues.get(waiter.task_queue)
            if queue is None:
                queue = queues[waiter.task_queue] = _Queue()
            queue.add_waiter(waiter)
    now = engine.now()
    names = sorted(queues)
    return {
        "server": server,
        "generated_time": wall(engine.clock, now),
        "totals": {
            "workers": len(workers),
            "open_sessions": sum(q.open_sessions for q in queues.values()),
            "waiting": sum(q.waiting for q in queues.values()),
            "task_queues": len(names),
        },
        "queues": [queues[name].json(name, now, engine.table.registry.candidates.why_unplaceable)
                   for name in names[:MAX_QUEUES]],
        "queues_total": len(names),
        "failures": failures_json(engine, now, RECENT_FAILURES),
    }


__all__ = [
    "MAX_SCAN",
    "SessionFilter",
    "failures_json",
    "overview",
    "session_json",
    "session_page",
    "worker_json",
    "worker_state",
]
