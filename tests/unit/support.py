"""Builders and small assertions shared by the unit tests of the pure core.

Every test drives its own manual clock: it passes ``now`` values and nothing else moves time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import TypeVar

from sessiond.core.events import ActivityEnded, Event, SessionEnded, SessionPlaced, WaiterFailed
from sessiond.core.model import Session, SessionOptions, SessionState, Waiter, Worker, WorkerKey, WorkerRegistration
from sessiond.core.resources import SESSIONS, ResourceVector
from sessiond.core.selector import Selector, parse_selector
from sessiond.core.table import SessionTable
from sessiond.core.token import Signer, TokenKeys

QUEUE = "q"
# One fixed key for every table of the unit tests, so a token made by one table is valid in another.
SIGNER = Signer(TokenKeys(b"unit-test-key-" * 3))


def token_for(key: WorkerKey, principal: str = "") -> bytes:
    """The recreate token of worker ``key`` (registered by ``principal``) under the tests' key."""
    return SIGNER.token(key, principal)

E = TypeVar("E", SessionPlaced, SessionEnded, WaiterFailed, ActivityEnded)


def before(deadline: float) -> float:
    """The last representable instant strictly before ``deadline``."""
    return math.nextafter(deadline, -math.inf)


def counting_ids(prefix: str = "id") -> Callable[[], str]:
    """A deterministic id factory: ``id-1``, ``id-2``, ..."""
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


def new_table(*, retention: float = 600.0, max_heartbeat_interval: float = 10.0, max_skips: int = 8) -> SessionTable:
    """A table with deterministic ids."""
    return SessionTable(retention=retention, max_heartbeat_interval=max_heartbeat_interval, new_id=counting_ids(),
                        max_skips=max_skips, signer=SIGNER)


def registration(worker_id: str, sessions: int = 1, *, task_queue: str = QUEUE, instance: str | None = None,
                 resources: dict[str, int] | None = None, labels: dict[str, str] | None = None,
                 ) -> WorkerRegistration:
    """What worker ``worker_id`` declares when it connects with room for ``sessions`` sessions (and
    ``resources`` besides, e.g. ``{"gpu": 2}``) and ``labels``.

    By default every registration of one worker id comes from the same process (``instance``), so
    a re-registration replaces the earlier stream at once; pass another instance to model a second
    process with that worker id.
    """
    return WorkerRegistration(task_queue=task_queue, worker_id=worker_id, identity=f"{worker_id}@host",
                              host_name=f"{worker_id}-host",
                              capacity=ResourceVector({**(resources or {}), SESSIONS: sessions}),
                              instance_id=f"{worker_id}-process" if instance is None else instance,
                              labels=dict(labels or {}))


def connect(table: SessionTable, worker_id: str, sessions: int = 1, *, now: float = 0.0,
            task_queue: str = QUEUE, resources: dict[str, int] | None = None,
            labels: dict[str, str] | None = None) -> Worker:
    """Connect a worker and return it."""
    return table.connect_worker(now, registration(worker_id, sessions, task_queue=task_queue, resources=resources,
                                                  labels=labels))


def demand(**amounts: int) -> ResourceVector:
    """What a session asks for: ``sessions: 1`` and ``amounts``."""
    return ResourceVector({SESSIONS: 1, **amounts})


def selector(text: str) -> Selector:
    """A parsed selector."""
    return parse_selector(text)


def options(*, creation: float = 60.0, execution: float = 24 * 3600.0, heartbeat: float = 20.0,
            caller: float = 0.0, reattach: float = 0.0) -> SessionOptions:
    """Session options with short names."""
    return SessionOptions(creation_timeout=creation, execution_timeout=execution, heartbeat_timeout=heartbeat,
                          caller_timeout=caller, reattach_timeout=reattach)


def create_placed(table: SessionTable, now: float = 0.0, opts: SessionOptions | None = None, *,
                  task_queue: str = QUEUE, owner: str = "", request_id: str = "",
                  asks: ResourceVector | None = None, where: str = "") -> Session:
    """Create a session that must be placed at once (asking for ``asks`` on workers matching ``where``)."""
    result = table.create(now, task_queue, opts or options(), owner=owner, request_id=request_id,
                          demand=asks or ResourceVector.one_session(), selector=parse_selector(where))
    assert isinstance(result, Session), f"expected a placed session, got {result!r}"
    return result


def create_waiting(table: SessionTable, now: float = 0.0, opts: SessionOptions | None = None, *,
                   task_queue: str = QUEUE, owner: str = "", request_id: str = "",
                   asks: ResourceVector | None = None, where: str = "") -> Waiter:
    """Create a session that must wait for capacity (asking for ``asks`` on workers matching ``where``)."""
    result = table.create(now, task_queue, opts or options(), owner=owner, request_id=request_id,
                          demand=asks or ResourceVector.one_session(), selector=parse_selector(where))
    assert isinstance(result, Waiter), f"expected a waiter, got {result!r}"
    return result


def state(session: Session) -> SessionState:
    """The session's state, read through a call so a type checker does not carry narrowing across mutations."""
    return session.state


def of_type(events: list[Event], kind: type[E]) -> list[E]:
    """The events of one kind, in order."""
    return [e for e in events if isinstance(e, kind)]


def placed_for(events: list[Event], waiter: Waiter) -> Session:
    """The session a waiter was given, from a batch of events (exactly one must match)."""
    matches = [e.session for e in of_type(events, SessionPlaced) if e.waiter_id == waiter.waiter_id]
    assert len(matches) == 1, f"waiter {waiter.waiter_id} placed {len(matches)} times in {events!r}"
    return matches[0]


def failed_for(events: list[Event], waiter: Waiter) -> WaiterFailed:
    """The failure of a waiter, from a batch of events (exactly one must match)."""
    matches = [e for e in of_type(events, WaiterFailed) if e.waiter_id == waiter.waiter_id]
    assert len(matches) == 1, f"waiter {waiter.waiter_id} failed {len(matches)} times in {events!r}"
    return matches[0]
