"""Sessions that outlive their worker's stream: detach, reattach, and adoption of reported sessions.

When a worker's stream ends without a goodbye, its sessions with a ``reattach_timeout`` stay OPEN,
*detached*: they keep their slots (the hard limit holds across the worker's restart), their
in-flight activities are aborted WORKER_DETACHED, and each fails WORKER_LOST at its reattach
deadline unless a stream with the same worker key registers first and takes it back (oldest first,
as far as the new stream's capacity holds). A restarted server, or a replica taking a worker over
(SPEC §6.5), *adopts* the sessions a registering worker reports that the table does not know, with
the same checks as placement.

:class:`Reattachment` owns the detached state (the last stream of each worker whose sessions are
detached, and one reattach deadline per detached session) and these decisions. It changes
sessions only through the table primitives that :class:`TableOps` lists (slots and liveness,
activities, installing and ending), so the table's invariants stay the table's.

Pure: no I/O, no clock; every method that depends on time takes ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from sessiond.core.deadlines import DeadlineQueue, LowWater
from sessiond.core.errors import AdoptionRefusedError, SessionError, WorkerDetachedError
from sessiond.core.events import Event, SessionDetached
from sessiond.core.model import (
    FailureCause,
    RequestKey,
    Session,
    SessionRecord,
    SessionState,
    Waiter,
    Worker,
    WorkerKey,
    create_request_key,
    recreate_request_key,
)


class TableOps(Protocol):
    """What reattachment needs of :class:`~sessiond.core.table.SessionTable`: its indices (read)
    and its primitive transitions, which keep slots, liveness groups and activities consistent."""

    @property
    def _sessions(self) -> Mapping[str, Session]: ...

    @property
    def _owners(self) -> Mapping[tuple[str, str], Session | Waiter]: ...

    @property
    def _requests(self) -> Mapping[RequestKey, Session | Waiter]: ...

    @property
    def _seq(self) -> Iterator[int]: ...

    @property
    def _events(self) -> list[Event]: ...

    def worker(self, key: WorkerKey, epoch: int) -> Worker | None: ...

    def _link(self, now: float, worker: Worker, session: Session) -> None: ...

    def _unlink(self, session: Session) -> None: ...

    def _leave_liveness(self, session: Session) -> None: ...

    def _install(self, now: float, worker: Worker, session: Session) -> None: ...

    def _update_interval(self, now: float, worker: Worker) -> None: ...

    def _abort_activities(self, session: Session, error: Callable[[], SessionError]) -> None: ...

    def _resume_activities(self, now: float, session: Session) -> None: ...

    def _end(self, now: float, session: Session, state: SessionState, cause: FailureCause | None, *,
             serve: bool = True) -> None: ...


class Reattachment:
    """The detached sessions of one table, their reattach deadlines, and adoption."""

    __slots__ = ("_parked", "_table", "deadlines")

    def __init__(self, table: TableOps, low_water: LowWater | None = None) -> None:
        """``low_water``: lowered by every reattach deadline (see :class:`~sessiond.core.deadlines.LowWater`)."""
        self._table = table
        # Detached sessions: when each fails unless its worker registers again.
        self.deadlines: DeadlineQueue[str] = DeadlineQueue(low_water)
        # The last stream of a worker whose sessions are detached: it keeps their slots counted.
        self._parked: dict[WorkerKey, Worker] = {}

    # ----------------------------------------------------------------- state

    def holds(self, key: WorkerKey) -> bool:
        """True while detached sessions hold ``key`` (its principal binding must not lapse)."""
        return key in self._parked

    def parked(self, key: WorkerKey) -> Worker | None:
        """The gone stream of ``key`` whose detached sessions wait for it, if any."""
        return self._parked.get(key)

    @property
    def open_count(self) -> int:
        """Detached sessions (they are OPEN). O(workers with detached sessions)."""
        return sum(len(w.sessions) for w in self._parked.values())

    # ----------------------------------------------------------------- detach

    def detach(self, now: float, session: Session) -> None:
        """The session's stream ended: keep it OPEN with its slot, abort what was in flight, and
        fail it WORKER_LOST at ``now + reattach_timeout`` unless its worker comes back."""
        table = self._table
        table._leave_liveness(session)
        session.detached_at = now
        sid = session.session_id
        table._abort_activities(session, lambda: WorkerDetachedError(sid))
        self.deadlines.set(sid, now + session.options.reattach_timeout)
        table._events.append(SessionDetached(session))

    def park(self, worker: Worker) -> None:
        """``worker``'s stream is gone; if it left detached sessions, it keeps their slots until
        they reattach or end."""
        if worker.sessions:
            self._parked[worker.key] = worker

    def unlinked(self, worker: Worker) -> None:
        """A session left ``worker``: a parked stream whose last session left is dropped."""
        if not worker.connected and not worker.sessions and self._parked.get(worker.key) is worker:
            del self._parked[worker.key]

    def settle(self, session: Session) -> None:
        """A detached session left OPEN (ended or aborted): it has no reattach deadline any more."""
        if session.detached_at is not None:
            self.deadlines.remove(session.session_id)

    def expire(self, now: float) -> None:
        """Fail WORKER_LOST every detached session whose reattach deadline is due at ``now``."""
        sessions = self._table._sessions
        for sid in self.deadlines.pop_due(now):
            self._table._end(now, sessions[sid], SessionState.FAILED, FailureCause.WORKER_LOST)

    # ----------------------------------------------------------------- reattach and adoption

    def reattach(self, now: float, worker: Worker) -> list[Session]:
        """Move the key's detached sessions to its new stream, oldest first, as far as it has room.

        Returns the sessions reattached; those it has no room for fail WORKER_LOST.
        """
        gone = self._parked.pop(worker.key, None)
        if gone is None:
            return []
        table = self._table
        out: list[Session] = []
        for session in sorted((table._sessions[sid] for sid in gone.sessions), key=lambda x: x.seq):
            if not worker.free.covers(session.demand):
                # The worker came back smaller: the hard limit wins over the reattach.
                table._end(now, session, SessionState.FAILED, FailureCause.WORKER_LOST)
                continue
            table._unlink(session)
            self.deadlines.remove(session.session_id)
            session.detached_at = None
            table._link(now, worker, session)
            table._resume_activities(now, session)
            out.append(session)
        return out

    def adopt_reports(self, now: float, worker: Worker, held: Iterable[SessionRecord]) -> list[Session]:
        """Adopt the sessions a registering ``worker`` reports that the table does not know; a report
        the table refuses is skipped. Serves no waiter: the caller does once every report is in."""
        adopted: list[Session] = []
        for record in held:
            if record.session_id in self._table._sessions:
                continue
            try:
                # No serving until every report is in: a slot freed by one adopted to be ended (past
                # its expiry) must not go to a waiting Create before a later report that the worker
                # really holds claims it. The caller serves what is left.
                adopted.append(self.adopt(now, worker.key, worker.epoch, record, serve=False))
            except AdoptionRefusedError:
                continue
        return adopted

    def adopt(self, now: float, key: WorkerKey, epoch: int, record: SessionRecord, *, serve: bool) -> Session:
        """:meth:`SessionTable.adopt_session <sessiond.core.table.SessionTable.adopt_session>`; with
        ``serve`` False a slot freed by ending an expired session is left for the caller to hand
        out (a registration adopts all its reports first).

        Raises:
            AdoptionRefusedError: nothing changed; the worker must drop the session.
        """
        table = self._table
        worker = table.worker(key, epoch)
        if worker is None:
            raise AdoptionRefusedError(f"worker {key.worker_id} is not connected at epoch {epoch}")
        if record.session_id in table._sessions:
            raise AdoptionRefusedError(f"session {record.session_id} is known already")
        if record.task_queue != key.task_queue:
            raise AdoptionRefusedError(f"session {record.session_id} is of another task queue")
        demand = record.demand
        if not worker.free.covers(demand):
            raise AdoptionRefusedError(f"worker {key.worker_id} has no room for session {record.session_id} "
                                       f"({demand})")
        if record.owner and (record.principal, record.owner) in table._owners:
            raise AdoptionRefusedError(f"owner {record.owner!r} already holds an open session or waits for one")
        if record.recreated:
            request_key = recreate_request_key(record.principal, key, record.request_id)
        else:
            request_key = create_request_key(record.principal, key.task_queue, record.request_id)
        if request_key in table._requests:
            request_key = ()
        session = Session(
            session_id=record.session_id, seq=next(table._seq), task_queue=key.task_queue, worker=worker,
            options=record.options, owner=record.owner, request_id=record.request_id, placed_at=record.placed_at,
            expire_at=record.expire_at, demand=demand, selector=record.selector, request_key=request_key,
            recreated=record.recreated, principal=record.principal,
        )
        table._install(now, worker, session)
        table._update_interval(now, worker)
        if session.expire_at <= now:
            # Adopted to be ended truthfully: its caller learns EXECUTION_TIMEOUT, not "lost".
            table._end(now, session, SessionState.FAILED, FailureCause.EXECUTION_TIMEOUT, serve=serve)
        return session

    def decline(self, now: float, key: WorkerKey, epoch: int, session_id: str) -> None:
        """:meth:`SessionTable.decline_session <sessiond.core.table.SessionTable.decline_session>`."""
        table = self._table
        worker = table.worker(key, epoch)
        session = table._sessions.get(session_id)
        if worker is not None and session is not None and session.state is SessionState.OPEN \
                and session.worker is worker:
            table._end(now, session, SessionState.FAILED, FailureCause.WORKER_LOST)
